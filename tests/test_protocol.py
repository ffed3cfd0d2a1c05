"""The sans-IO protocol: codec properties and the connection state machine against a model.

* Codec: ``decode`` is total (never raises, whatever the text); event and response packets
  round-trip for any JSON data; batches decode element by element; heartbeats; what counts as
  raw; ``bytes`` become base64 objects; nesting beyond the parser's depth is raw; integers
  beyond 64 bits survive.
* ``Machine``: a ``RuleBasedStateMachine`` feeds random inbound messages (handshakes with and
  without cid, custom and reserved events, responses, pongs of both protocols, pings, raw
  text, batches mixing them) and ``handshake_done()``/``close()`` calls, and compares every
  decision, the state and the detected protocol with a model written from the table in
  ``protocol/state.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from strategies import MAX_SAFE_INTEGER, json_text, json_values

from trio_socketcluster.protocol import (
    MISSING,
    Action,
    Close,
    EventPacket,
    Machine,
    Ping,
    Pong,
    Raw,
    ResponsePacket,
    State,
    decode,
    encode,
    event_bytes,
    response_bytes,
)
from trio_socketcluster.protocol.codec import MAX_BATCH_PACKETS

RESERVED = {
    "#handshake": Action.DUPLICATE_HANDSHAKE,
    "#authenticate": Action.AUTHENTICATE,
    "#removeAuthToken": Action.REMOVE_AUTH_TOKEN,
    "#subscribe": Action.SUBSCRIBE,
    "#unsubscribe": Action.UNSUBSCRIBE,
    "#publish": Action.PUBLISH,
    "#disconnect": Action.CLIENT_DISCONNECT,
}

cids = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
event_names = json_text(max_size=12) | st.sampled_from(sorted(RESERVED))


# ------------------------------------------------------------------------------------ codec


@given(st.text())
def test_decode_never_raises_on_any_text(text: str) -> None:
    packets = decode(text)
    assert packets or text.strip(" \n\r\t").startswith("[")  # only an empty batch is empty
    assert all(isinstance(p, EventPacket | ResponsePacket | Ping | Pong | Raw) for p in packets)


@given(st.text(alphabet='{}[]",:0123456789.eE+-truefalsn \\u\n', max_size=60))
def test_decode_never_raises_on_json_like_text(text: str) -> None:
    packets = decode(text)
    assert packets or text.strip(" \n").startswith("[")


@given(json_values(max_leaves=30))
def test_decode_never_raises_on_any_json(value: Any) -> None:
    packets = decode(json.dumps(value))
    assert isinstance(packets, list)
    if not isinstance(value, list):
        assert len(packets) == 1


@given(event_names, json_values() | st.just(MISSING), st.none() | cids)
def test_event_round_trip(event: str, data: Any, cid: int | None) -> None:
    text = event_bytes(event, data, cid).decode("utf-8")
    expected_data = None if data is MISSING else data
    assert decode(text) == [EventPacket(event=event, data=expected_data, cid=cid)]
    assert json.loads(text) == {
        "event": event,
        **({} if data is MISSING else {"data": data}),
        **({} if cid is None else {"cid": cid}),
    }


@given(cids, json_values() | st.just(MISSING), json_values() | st.just(MISSING))
def test_response_round_trip(rid: int, data: Any, error: Any) -> None:
    text = response_bytes(rid, data, error).decode("utf-8")
    assert decode(text) == [
        ResponsePacket(
            rid=rid,
            data=None if data is MISSING else data,
            error=None if error is MISSING else error,
        )
    ]


@given(st.lists(st.tuples(event_names, json_values(), cids), max_size=20))
def test_batches_decode_element_by_element(items: list[tuple[str, Any, int]]) -> None:
    text = encode([{"event": e, "data": d, "cid": c} for e, d, c in items]).decode()
    assert decode(text) == [EventPacket(event=e, data=d, cid=c) for e, d, c in items]


def test_heartbeats() -> None:
    assert decode("") == [Pong(protocol=2)]
    assert decode("#2") == [Pong(protocol=1)]
    assert decode("#1") == [Ping(protocol=1)]
    assert decode("#3") == [Raw(value="#3")]
    assert decode(" #2") == [Raw(value=" #2")]
    assert decode("#2 ") == [Raw(value="#2 ")]


@given(st.text(min_size=1).filter(lambda t: t.lstrip(" \n\r\t")[:1] not in ("{", "[")))
def test_text_that_is_not_an_object_or_array_is_raw(text: str) -> None:
    if text in ("#1", "#2"):
        return
    assert decode(text) == [Raw(value=text)]


@pytest.mark.parametrize(
    "value",
    [
        {"event": 1, "data": 2},  # event not a string
        {"event": None},
        {"rid": "1", "data": 2},  # rid not an integer
        {"rid": 1.5},
        {"rid": True},
        {"data": 1},
        {},
        "a string",
        7,
        None,
    ],
)
def test_packets_of_the_wrong_shape_are_raw(value: Any) -> None:
    assert decode(json.dumps([value])) == [Raw(value=value)]
    if isinstance(value, dict):
        assert decode(json.dumps(value)) == [Raw(value=value)]


@pytest.mark.parametrize("cid", ["abc", 1.5, True, None, [1], {"a": 1}])
def test_a_non_integer_cid_makes_a_transmit(cid: Any) -> None:
    assert decode(json.dumps({"event": "e", "data": 1, "cid": cid})) == [
        EventPacket(event="e", data=1, cid=None)
    ]


def test_an_event_with_rid_is_an_event() -> None:
    assert decode('{"event":"e","rid":3}') == [EventPacket(event="e")]


def test_invalid_json_is_raw_text() -> None:
    for text in (
        "{", "[1,", '{"event":}', "{'event': 'x'}", "  {x",
        "[NaN]", '{"event":"e","data":Infinity}', "[-Infinity]",  # JSON.parse refuses them
    ):  # fmt: skip
        assert decode(text) == [Raw(value=text)]


def test_whitespace_before_json_is_allowed() -> None:
    assert decode(' \n{"event":"e"}') == [EventPacket(event="e")]


@given(st.binary(max_size=64))
def test_bytes_become_base64_objects(blob: bytes) -> None:
    expected = {"base64": True, "data": base64.b64encode(blob).decode("ascii")}
    for form in (blob, bytearray(blob), memoryview(blob)):
        assert json.loads(encode({"x": form})) == {"x": expected}
    assert json.loads(response_bytes(1, blob)) == {"rid": 1, "data": expected}


def test_encode_is_compact_and_maps_containers() -> None:
    assert encode({"a": [1, 2], "b": None}) == b'{"a":[1,2],"b":null}'
    assert encode((1, 2)) == b"[1,2]"
    assert encode({1: "x"}) == b'{"1":"x"}'
    assert json.loads(encode({"s": {5}})) == {"s": [5]}
    assert encode("é") == '"é"'.encode()


@pytest.mark.parametrize("value", [object(), {"x": object()}, "\ud800", [1, {"a": "\udfff"}]])
def test_encode_refuses_values_without_json_form(value: Any) -> None:
    with pytest.raises(TypeError):
        encode(value)


@pytest.mark.parametrize("depth", [1_100, 5_000, 100_000])
def test_deep_nesting_is_raw(depth: int) -> None:
    text = "[" * depth + "]" * depth
    assert decode(text) == [Raw(value=text)]
    obj = '{"event":"e","data":' + "[" * depth + "]" * depth + "}"
    assert decode(obj) == [Raw(value=obj)]
    unclosed = "[" * depth
    assert decode(unclosed) == [Raw(value=unclosed)]


def test_moderate_nesting_is_parsed() -> None:
    data: Any = 1
    for _ in range(200):
        data = [data]
    assert decode(json.dumps({"event": "e", "data": data})) == [EventPacket(event="e", data=data)]


@given(st.integers().filter(lambda n: abs(n) > 2**53) | st.integers(2**63 - 5, 2**64 + 5))
def test_huge_integers_survive(n: int) -> None:
    """Beyond 64 bits orjson reads a double, as ``JSON.parse`` does; never raw, never lost
    beyond a double's precision. Encoding is exact."""
    text = json.dumps({"event": "e", "data": {"n": n}, "cid": 1})
    [packet] = decode(text)
    assert isinstance(packet, EventPacket) and packet.cid == 1
    got = packet.data["n"]
    assert got == n or (isinstance(got, float) and got == float(n))
    assert json.loads(encode({"n": n, "k": [n]})) == {"n": n, "k": [n]}
    assert json.loads(response_bytes(1, {str(n): n})) == {"rid": 1, "data": {str(n): n}}


def test_numbers_beyond_a_double_are_infinite_not_raw() -> None:
    assert decode('{"event":"e","data":1e400}') == [EventPacket(event="e", data=float("inf"))]


def test_a_batch_beyond_the_limit_is_raw() -> None:
    text = json.dumps([{"event": "e"}] * (MAX_BATCH_PACKETS + 1))
    assert decode(text) == [Raw(value=text)]
    ok = json.dumps([{"event": "e"}] * MAX_BATCH_PACKETS)
    assert len(decode(ok)) == MAX_BATCH_PACKETS


def test_empty_batch_decodes_to_nothing() -> None:
    assert decode("[]") == []
    assert Machine().receive("[]") == []


# ---------------------------------------------------------------------------- state machine

# A generated inbound *packet* is described by a kind the model understands, and the JSON value
# (for packets that can sit in a batch) or the text (heartbeats) that carries it.
Kind = tuple[str, Any]  # ("handshake", has_cid) | ("event", name) | ("response", None)
#                           | ("pong", protocol) | ("ping", None) | ("raw", None)


@st.composite
def batchable_packets(draw: st.DrawFn) -> tuple[Kind, Any]:
    choice = draw(st.sampled_from(["handshake", "event", "response", "raw"]))
    data = draw(json_values(max_leaves=4))
    if choice == "handshake":
        has_cid = draw(st.booleans())
        value: dict[str, Any] = {"event": "#handshake", "data": data}
        if has_cid:
            value["cid"] = draw(cids)
        elif draw(st.booleans()):
            value["cid"] = draw(st.sampled_from(["1", 1.5, None, True]))
        return ("handshake", has_cid), value
    if choice == "event":
        name = draw(event_names.filter(lambda n: n != "#handshake"))
        value = {"event": name, "data": data}
        if draw(st.booleans()):
            value["cid"] = draw(cids)
        return ("event", name), value
    if choice == "response":
        return ("response", None), {"rid": draw(cids), "data": data}
    raw = draw(
        st.sampled_from([{"x": 1}, {"event": 5}, {"rid": "2"}, "#2", "", "#1", 3, None, [1]])
    )
    return ("raw", None), raw


def expected_action(state: State, protocol: int | None, kind: Kind) -> tuple[Action, int | None]:
    """The table of ``protocol/state.py``: (action, close code) for one packet."""
    name, arg = kind
    if state is State.CLOSED:
        return Action.IGNORE, None
    if state is State.CONNECTING:
        if name == "handshake":
            return (Action.HANDSHAKE, None) if arg else (Action.CLOSE, 4008)
        return Action.CLOSE, 4009
    if name == "handshake":
        return Action.DUPLICATE_HANDSHAKE, None
    if name == "event":
        return RESERVED.get(arg, Action.EMIT), None
    if name == "response":
        return Action.RESPONSE, None
    if name == "pong":
        return Action.PONG, None
    return Action.IGNORE, None


class MachineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine()
        self.state = State.CONNECTING
        self.protocol: int | None = None

    @initialize(protocol=st.sampled_from([None, None, 1, 2]))
    def start(self, protocol: int | None) -> None:
        self.machine = Machine(protocol)
        self.protocol = protocol

    def feed(self, text: str, kinds: list[Kind]) -> None:
        decisions = self.machine.receive(text)
        expected: list[tuple[Action, int | None]] = []
        for kind in kinds:
            action, code = expected_action(self.state, self.protocol, kind)
            expected.append((action, code))
            if action is Action.CLOSE:
                self.state = State.CLOSED
                break
            if self.state is State.OPEN and self.protocol is None:
                if kind[0] == "pong":
                    self.protocol = kind[1]
                elif kind == ("event", "#disconnect"):
                    self.protocol = 1
        got = [
            (action, packet.code if isinstance(packet, Close) else None)
            for action, packet in decisions
        ]
        assert got == expected, (text, kinds)
        for action, packet in decisions:
            if action is Action.CLOSE:
                assert isinstance(packet, Close)
                assert isinstance(packet.packet, EventPacket | ResponsePacket | Pong | Ping | Raw)
            else:
                assert not isinstance(packet, Close)

    @rule(packet=batchable_packets())
    def single(self, packet: tuple[Kind, Any]) -> None:
        kind, value = packet
        self.feed(json.dumps(value), [kind])  # a JSON string alone is raw text, never a pong

    @rule(packets=st.lists(batchable_packets(), max_size=6))
    def batch(self, packets: list[tuple[Kind, Any]]) -> None:
        self.feed(json.dumps([v for _, v in packets]), [k for k, _ in packets])

    @rule(text=st.sampled_from(["", "#2"]))
    def pong(self, text: str) -> None:
        self.feed(text, [("pong", 2 if text == "" else 1)])

    @rule()
    def ping(self) -> None:
        self.feed("#1", [("ping", None)])

    @rule(text=st.sampled_from(["not json", "#3", "{", "[1,", "  x", "\x00"]))
    def raw_text(self, text: str) -> None:
        self.feed(text, [("raw", None)])

    @precondition(lambda self: self.state is State.CONNECTING)
    @rule(cid=cids)
    def handshake(self, cid: int) -> None:
        text = json.dumps({"event": "#handshake", "data": {}, "cid": cid})
        self.feed(text, [("handshake", True)])

    @rule()
    def handshake_done(self) -> None:
        self.machine.handshake_done()
        if self.state is State.CONNECTING:
            self.state = State.OPEN

    @rule()
    def close(self) -> None:
        self.machine.close()
        self.state = State.CLOSED

    @invariant()
    def matches_model(self) -> None:
        assert self.machine.state is self.state
        assert self.machine.protocol == self.protocol
        expected = {None: (b"#1", b""), 1: (b"#1",), 2: (b"",)}[self.protocol]
        assert self.machine.ping_payloads() == expected


MachineModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestMachine = MachineModel.TestCase


def test_close_stops_the_rest_of_a_batch() -> None:
    machine = Machine()
    decisions = machine.receive(json.dumps([{"event": "x", "cid": 1}, {"event": "#handshake"}]))
    assert [a for a, _ in decisions] == [Action.CLOSE]
    assert machine.state is State.CLOSED
    assert machine.receive('{"event":"#handshake","cid":1}')[0][0] is Action.IGNORE


def test_handshake_without_integer_cid_closes_4008() -> None:
    for cid in ("1", None, 1.0, True):
        [(action, packet)] = Machine().receive(json.dumps({"event": "#handshake", "cid": cid}))
        assert action is Action.CLOSE
        assert isinstance(packet, Close) and packet.code == 4008


def test_first_pong_locks_the_protocol() -> None:
    machine = Machine()
    machine.receive('{"event":"#handshake","cid":1}')
    machine.handshake_done()
    assert machine.ping_payloads() == (b"#1", b"")
    machine.receive("#2")
    assert machine.protocol == 1
    machine.receive("")
    assert machine.protocol == 1
    assert machine.ping_payloads() == (b"#1",)


def test_pong_before_handshake_closes_4009() -> None:
    for text in ("", "#2", "#1", "x", '{"rid":1}'):
        [(action, packet)] = Machine().receive(text)
        assert action is Action.CLOSE
        assert isinstance(packet, Close) and packet.code == 4009
