"""``--log-format json``: one parseable object per record, whatever the message holds."""

from __future__ import annotations

import logging

import orjson
from hypothesis import given
from hypothesis import strategies as st

from trio_socketcluster.logs import JsonFormatter


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "trio_socketcluster", "levelno": 30,
                                 "levelname": "WARNING", "msg": msg, "args": ()})  # fmt: skip
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@given(st.text())
def test_any_message_is_one_json_line(msg: str) -> None:
    line = JsonFormatter().format(record(msg))
    assert "\n" not in line
    obj = orjson.loads(line)
    assert obj["msg"] == msg
    assert obj["level"] == "warning"
    assert obj["logger"] == "trio_socketcluster"


def test_extra_fields_and_exceptions_are_kept() -> None:
    rec = record("closed", socket_id="abc", client="127.0.0.1:5000")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec.exc_info = sys.exc_info()
    obj = orjson.loads(JsonFormatter().format(rec))
    assert obj["socket_id"] == "abc"
    assert obj["client"] == "127.0.0.1:5000"
    assert "ValueError: boom" in obj["exc"]
