"""Log output: ``--log-format json`` (one JSON object per line) and the plain format.

``JsonFormatter`` writes ``{"ts", "level", "logger", "msg", ...}`` per record, plus the
fields a call passes in ``extra=`` (the server passes ``socket_id`` and ``client`` for
connection lifecycle records), and ``exc`` (the formatted exception) when there is one. A
message can never break the line: newlines in it are escaped by JSON.

``configure(level, fmt)`` sets up the root logger for the command line.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any, Final, Literal

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure"]

LOG_FORMATS: Final = ("text", "json")
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode("utf-8")


def configure(level: str = "info", fmt: Literal["text", "json"] = "text") -> None:
    """Send the root logger's records to stderr at ``level`` in ``fmt``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
