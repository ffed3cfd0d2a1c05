"""The sans-IO protocol: codec properties and the connection state machine against a model.

* Codec: ``decode`` is total (never raises, whatever the text); event and response packets
  round-trip for any JSON data; batches decode element by element; heartbeats; what counts as
  raw; ``bytes`` become base64 objects; nesting beyond the parser's depth is raw; integers
  beyond 64 bits survive.
* Events (``protocol/events.py``): any text or bytes becomes valid events (never an exception);
  what an encoder writes comes back as the same event; lone surrogates, empty channel names,
  non-finite cids are ``Invalid`` with the exact wire error; numeric cids are kept as sent;
  bytes that are UTF-8 mean what their text means, other bytes are raw.
* ``Machine``: a ``RuleBasedStateMachine`` feeds random inbound messages (handshakes with and
  without cid, custom and reserved events, responses, pongs of both protocols, pings, raw
  text, batches mixing them) and ``handshake_done()``/``close()`` calls, and compares every
  event type, the state and the detected protocol with a model written from the table in
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

from trio_socketcluster.errors import InvalidActionError, InvalidMessageError
from trio_socketcluster.protocol import (
    MISSING,
    Authenticate,
    ClientDisconnect,
    Close,
    Emit,
    Event,
    EventPacket,
    Fault,
    Handshake,
    Invalid,
    Machine,
    Ping,
    Pong,
    Publish,
    Raw,
    RemoveAuthToken,
    Response,
    ResponsePacket,
    State,
    Subscribe,
    Unsubscribe,
    decode,
    encode,
    event_bytes,
    publish_bytes,
    response_bytes,
)
from trio_socketcluster.protocol.codec import (
    MAX_BATCH_PACKETS,
    disconnect_bytes,
    kick_out_bytes,
    set_auth_token_bytes,
)
from trio_socketcluster.protocol.rules import DEFAULT_REASONS, close_reason

#: What each reserved event means once open, for a well-formed packet of its own kind.
RESERVED: dict[str, type] = {
    "#handshake": Invalid,  # already done
    "#authenticate": Authenticate,
    "#removeAuthToken": RemoveAuthToken,
    "#subscribe": Subscribe,
    "#unsubscribe": Unsubscribe,
    "#publish": Publish,
    "#disconnect": ClientDisconnect,
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
def test_a_non_integer_cid_makes_a_transmit_for_the_client(cid: Any) -> None:
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
    assert isinstance(packet, EventPacket)
    assert packet.cid == 1
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
    assert opened().receive("[]") == []


# ------------------------------------------------------------------------------- events


def opened(protocol: int | None = None) -> Machine:
    machine = Machine(protocol)
    machine.handshake_done()
    return machine


def one(text: str | bytes) -> Event:
    [event] = opened().receive(text)
    return event


EVENT_TYPES = (
    Handshake, Authenticate, RemoveAuthToken, Subscribe, Unsubscribe, Publish, Emit, Response,
    ClientDisconnect, Pong, Ping, Raw, Invalid, Close,
)  # fmt: skip


@given(st.text() | st.binary(), st.booleans())
def test_any_message_becomes_events_without_raising(message: str | bytes, is_open: bool) -> None:
    machine = opened() if is_open else Machine()
    events = machine.receive(message)
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    if not is_open:
        assert all(isinstance(e, Handshake | Close) for e in events)


@given(json_values(max_leaves=30), st.booleans())
def test_any_json_becomes_events_without_raising(value: Any, batch: bool) -> None:
    events = opened().receive(json.dumps([value] if batch else value))
    expected = len(value) if isinstance(value, list) and not batch else 1
    assert len(events) == expected
    assert all(isinstance(e, EVENT_TYPES) for e in events)


surrogate_text = st.builds(
    lambda before, lone, after: before + lone + after,
    json_text(max_size=5),
    st.characters(categories=["Cs"]),  # alone between non-surrogates: never a pair
    json_text(max_size=5),
)


@given(
    st.sampled_from(["echo", *sorted(RESERVED)]),
    surrogate_text,
    st.sampled_from(["data", "key", "event"]),
    st.none() | cids,
)
def test_lone_surrogates_are_invalid_wherever_they_are(
    event: str, text: str, where: str, cid: int | None
) -> None:
    packet: dict[str, Any] = {"event": event, "data": {"channel": "c", "data": text}}
    if where == "key":
        packet["data"] = {"channel": "c", "data": {text: 1}}
    elif where == "event":
        packet["event"] = text
    if cid is not None:
        packet["cid"] = cid
    for message in (json.dumps(packet), json.dumps([packet])):  # ASCII escapes: valid JSON
        assert opened().receive(message) == [
            Invalid(cid=cid, error=invalid_error(Fault.LONE_SURROGATE), fault=Fault.LONE_SURROGATE)
        ]
    machine = Machine()
    if event == "#handshake" and where != "event" and cid is not None:
        assert machine.receive(json.dumps(packet)) == [
            Close(code=4008, reason="Handshake request was malformatted")
        ]
    else:
        assert [type(e) for e in machine.receive(json.dumps(packet))] == [Close]
    assert machine.state is State.CLOSED


def invalid_error(fault: Fault) -> Any:
    [event] = opened().receive(
        {
            Fault.LONE_SURROGATE: '{"event":"e","data":"\\ud800","cid":1}',
            Fault.NON_FINITE_CID: '{"event":"e","cid":1e400}',
        }[fault]
    )
    assert isinstance(event, Invalid)
    return event.error


def test_lone_surrogate_error_text() -> None:
    event = one('{"event":"echo","data":"\\ud800","cid":7}')
    assert isinstance(event, Invalid)
    assert event.cid == 7
    assert isinstance(event.error, InvalidMessageError)
    assert "lone surrogate" in event.error.message
    assert one('{"event":"echo","data":"\\ud83d\\ude00","cid":7}') == Emit(
        event="echo", data="\U0001f600", cid=7
    )  # a proper pair is fine


@given(event_names.filter(lambda n: n not in RESERVED), json_values() | st.just(MISSING))
def test_emit_round_trip_with_any_numeric_cid(event: str, data: Any) -> None:
    for cid in (None, 0, 5, -3, 2.5, 1e300, 2**64, MAX_SAFE_INTEGER):
        text = event_bytes(event, data, cid)  # type: ignore[arg-type]
        expected = Emit(event=event, data=None if data is MISSING else data, cid=cid)
        assert one(text.decode()) == expected
        assert one(text) == expected  # the same bytes in a binary frame


@pytest.mark.parametrize("cid", ["abc", True, None, [1], {"a": 1}])
def test_a_non_numeric_cid_makes_a_transmit(cid: Any) -> None:
    assert one(json.dumps({"event": "e", "data": 1, "cid": cid})) == Emit(
        event="e", data=1, cid=None
    )


def test_a_thirty_digit_cid_is_read_as_a_double_as_javascript_does() -> None:
    event = one('{"event":"e","cid":123456789012345678901234567890}')
    assert event == Emit(event="e", data=None, cid=1.2345678901234568e29)


@pytest.mark.parametrize("text", ["1e400", "-1e400"])
def test_a_non_finite_cid_is_invalid_and_answered_with_a_null_rid(text: str) -> None:
    event = one('{"event":"e","cid":' + text + "}")
    assert isinstance(event, Invalid)
    assert event.fault is Fault.NON_FINITE_CID
    assert event.cid is not None
    assert json.loads(response_bytes(event.cid, error=event.error.to_wire())) == {
        "rid": None,
        "error": {"name": "InvalidMessageError", "message": event.error.message},
    }


@given(cids | st.floats(allow_nan=False, allow_infinity=False), json_values(), json_values())
def test_response_round_trip_as_an_event(rid: float, data: Any, error: Any) -> None:
    assert one(response_bytes(rid, data, error).decode()) == Response(
        rid=rid, data=data, error=error
    )


CHANNEL_CASES = [
    ({"channel": "a"}, Subscribe(channel="a", wait_for_auth=False, data=None, cid=2)),
    ("a", Subscribe(channel="a", wait_for_auth=False, data=None, cid=2)),
    (
        {"channel": "a", "waitForAuth": True, "data": [1]},
        Subscribe(channel="a", wait_for_auth=True, data=[1], cid=2),
    ),
]


@pytest.mark.parametrize(("data", "expected"), CHANNEL_CASES)
def test_subscribe_forms(data: Any, expected: Subscribe) -> None:
    assert one(json.dumps({"event": "#subscribe", "data": data, "cid": 2})) == expected


@pytest.mark.parametrize(
    ("event", "data", "message"),
    [
        ("#subscribe", {"channel": ""}, "Cannot subscribe to a channel with an empty name"),
        ("#subscribe", "", "Cannot subscribe to a channel with an empty name"),
        ("#subscribe", {"channel": 1}, "Subscribe channel name was malformatted"),
        ("#subscribe", None, "Subscribe channel name was malformatted"),
        ("#publish", {"channel": ""}, "Cannot publish to a channel with an empty name"),
        ("#publish", {"channel": None}, "Publish channel name was malformatted"),
        ("#publish", "a", "Publish channel name was malformatted"),
        ("#unsubscribe", {"channel": "a"}, "Unsubscribe channel name was malformatted"),
        ("#handshake", {}, "The handshake was already done"),
    ],
)
def test_malformed_reserved_events_are_invalid_with_the_wire_text(
    event: str, data: Any, message: str
) -> None:
    for cid in (2, None):
        packet = {"event": event, "data": data, **({} if cid is None else {"cid": cid})}
        got = one(json.dumps(packet))
        assert isinstance(got, Invalid)
        assert got.cid == cid
        assert isinstance(got.error, InvalidActionError)
        assert got.error.message == message


@given(json_text(max_size=12).filter(bool), json_values())
def test_publish_round_trip(channel: str, data: Any) -> None:
    assert one(publish_bytes(channel, data).decode()) == Publish(
        channel=channel, data=data, cid=None
    )


def test_server_frames() -> None:
    assert json.loads(disconnect_bytes(4001, "x")) == {
        "event": "#disconnect",
        "data": {"code": 4001, "data": "x"},
    }
    assert json.loads(set_auth_token_bytes("t")) == {
        "event": "#setAuthToken",
        "data": {"token": "t"},
    }
    assert json.loads(kick_out_bytes("c", None)) == {"event": "#kickOut", "data": {"channel": "c"}}
    assert json.loads(kick_out_bytes("c", "m")) == {
        "event": "#kickOut",
        "data": {"message": "m", "channel": "c"},
    }


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_utf8_bytes_mean_what_their_text_means(text: str) -> None:
    assert opened().receive(text.encode()) == opened().receive(text)


@given(st.binary().filter(lambda b: not _is_utf8(b)))
def test_bytes_that_are_not_utf8_are_raw(blob: bytes) -> None:
    assert opened().receive(blob) == [Raw(value=blob)]
    machine = Machine()
    assert machine.receive(blob) == [
        Close(code=4009, reason="Server received a message before the client handshake")
    ]


def _is_utf8(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_every_default_reason_is_a_short_text() -> None:
    assert all(0 < len(r.encode()) <= 123 for r in DEFAULT_REASONS.values())
    assert close_reason(4009) == "Server received a message before the client handshake"
    assert close_reason(4500) == "Socket closed by the server"
    assert close_reason(4500, "mine") == "mine"


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
            value["cid"] = draw(cids | st.sampled_from([1.5, 7.0]))
        elif draw(st.booleans()):
            value["cid"] = draw(st.sampled_from(["1", None, True]))
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


def expected_events(state: State, kind: Kind, value: Any) -> tuple[type, ...] | None:
    """The table of ``protocol/state.py``: the event types one packet may become (``None``:
    the packet is not looked at). Reserved events may be ``Invalid`` when malformed."""
    name, arg = kind
    if state is State.CLOSED:
        return None
    if state is State.CONNECTING:
        if name == "handshake":
            return (Handshake,) if arg else (Close,)
        return (Close,)
    if name == "handshake":
        return (Invalid,)
    if name == "event":
        return (RESERVED[arg], Invalid) if arg in RESERVED else (Emit,)
    if name == "response":
        return (Response,)
    if name == "pong":
        return (Pong,)
    if name == "ping":
        return (Ping,)
    return (Raw,)


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

    def feed(self, message: str, packets: list[tuple[Kind, Any]]) -> None:
        events = self.machine.receive(message)
        state = self.state
        expected: list[tuple[type, ...]] = []
        for kind, value in packets:
            types = expected_events(state, kind, value)
            if types is None:
                break
            expected.append(types)
            if types == (Close,):
                self.state = State.CLOSED
                break
            if state is State.OPEN and self.protocol is None:
                if kind[0] == "pong":
                    self.protocol = kind[1]
                elif kind == ("event", "#disconnect"):
                    self.protocol = 1
        assert len(events) == len(expected), (message, events, expected)
        for event, types in zip(events, expected, strict=True):
            assert isinstance(event, types), (message, event, types)
            if isinstance(event, Close):
                assert event.code in (4008, 4009)
                assert event.reason

    @rule(packet=batchable_packets())
    def single(self, packet: tuple[Kind, Any]) -> None:
        self.feed(json.dumps(packet[1]), [packet])  # a JSON string alone is raw, never a pong

    @rule(packets=st.lists(batchable_packets(), max_size=6))
    def batch(self, packets: list[tuple[Kind, Any]]) -> None:
        self.feed(json.dumps([v for _, v in packets]), packets)

    @rule(text=st.sampled_from(["", "#2"]))
    def pong(self, text: str) -> None:
        self.feed(text, [(("pong", 2 if text == "" else 1), text)])

    @rule()
    def ping(self) -> None:
        self.feed("#1", [(("ping", None), "#1")])

    @rule(text=st.sampled_from(["not json", "#3", "{", "[1,", "  x", "\x00"]))
    def raw_text(self, text: str) -> None:
        self.feed(text, [(("raw", None), text)])

    @precondition(lambda self: self.state is State.CONNECTING)
    @rule(cid=cids)
    def handshake(self, cid: int) -> None:
        value = {"event": "#handshake", "data": {}, "cid": cid}
        self.feed(json.dumps(value), [(("handshake", True), value)])

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
    events = machine.receive(json.dumps([{"event": "x", "cid": 1}, {"event": "#handshake"}]))
    assert events == [
        Close(code=4009, reason="Server received a message before the client handshake")
    ]
    assert machine.state is State.CLOSED
    assert machine.receive('{"event":"#handshake","cid":1}') == []


def test_handshake_without_a_finite_numeric_cid_closes_4008() -> None:
    for cid in ("1", None, True, "1e400"):
        text = '{"event":"#handshake","cid":' + (cid if cid == "1e400" else json.dumps(cid)) + "}"
        assert Machine().receive(text) == [
            Close(code=4008, reason="Handshake request was malformatted")
        ]


def test_handshake_with_any_finite_number_is_accepted() -> None:
    for cid in (1, 1.0, 2.5, 0):
        [event] = Machine().receive(json.dumps({"event": "#handshake", "data": None, "cid": cid}))
        assert event == Handshake(data=None, auth_token=None, cid=cid)
    [event] = Machine().receive('{"event":"#handshake","data":{"authToken":"t"},"cid":3}')
    assert event == Handshake(data={"authToken": "t"}, auth_token="t", cid=3)


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
    for text in ("", "#2", "#1", "x", '{"rid":1}', b"\xff"):
        assert Machine().receive(text) == [
            Close(code=4009, reason="Server received a message before the client handshake")
        ]
