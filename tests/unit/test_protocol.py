"""The agent protocol: every message round-trips, and any malformed frame becomes an error frame."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import protocol as p

EXAMPLES: list[p._Message] = [
    p.Hello(
        payload=p.HelloPayload(
            role="controller", protocol_versions=[1], software_version="0.1.0", capabilities=["tunnel", "terminal"]
        )
    ),
    p.Heartbeat(
        payload=p.HeartbeatPayload(
            cluster_id="c-1",
            k8s_version="v1.36.3",
            nodes=[
                p.NodeReport(
                    name="node-01",
                    status="ready",
                    agent_status="online",
                    agent_version="0.1.0",
                    internal_ip="10.0.0.1",
                    cpu_capacity="4",
                    memory_capacity="16Gi",
                ),
                p.NodeReport(name="node-02", status="not-ready"),
            ],
        )
    ),
    p.StartTunnel(
        id="m-1",
        payload=p.StartTunnelPayload(
            session_id="s-1", node_name="node-01", tunnel_token="tok-SECRET", services=["ssh", "web"]
        ),
    ),
    p.StopTunnel(payload=p.SessionRef(session_id="s-1")),
    p.TunnelReady(payload=p.TunnelReadyPayload(session_id="s-1", public_hostname="sess-1.support.example.com")),
    p.TunnelError(payload=p.TunnelErrorPayload(session_id="s-1", error="cloudflared not found at /usr/bin/x")),
    p.Ack(payload=p.AckPayload(of="m-1")),
    p.Error(payload=p.ErrorPayload(code=p.ErrorCode.invalid, message="nope", of="m-1")),
    p.TerminalOpen(payload=p.TerminalOpenPayload(session_id="s-1", node_name="node-01", cols=120, rows=40)),
    p.TerminalData(payload=p.TerminalDataPayload(session_id="s-1", data=base64.b64encode(b"ls\r").decode())),
    p.TerminalResize(payload=p.TerminalResizePayload(session_id="s-1", cols=100, rows=30)),
    p.TerminalClose(payload=p.TerminalClosePayload(session_id="s-1", reason="ended")),
    p.RecordingChunk(
        payload=p.RecordingChunkPayload(
            session_id="s-1", seq=0, data='{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "$ "]\n', final=True
        )
    ),
    p.NodeFacts(
        payload=p.NodeFactsPayload(
            node_name="node-01",
            agent_version="0.1.0",
            hostname="node-01",
            ips=["10.0.0.1", "fe80::1"],
            os="Debian GNU/Linux 13",
            kernel="6.12.0",
            architecture="x86_64",
            cpu_count=4,
            memory_bytes=16 * 2**30,
        )
    ),
    p.Ping(id="m-2", payload=p.PingPayload(node_name="node-01")),
    p.Pong(id="m-2", payload=p.PongPayload(role="agent", node_name="node-01", software_version="0.1.0")),
]


def test_examples_cover_every_message_type() -> None:
    assert {m.type for m in EXAMPLES} == p.TYPE_NAMES


@pytest.mark.parametrize("message", EXAMPLES, ids=[m.type for m in EXAMPLES])
def test_round_trip(message: p._Message) -> None:
    assert p.decode(p.encode(message)) == message


def test_tunnel_token_is_on_the_wire_but_never_in_repr() -> None:
    message = EXAMPLES[2]
    assert "tok-SECRET" in p.encode(message)
    assert "tok-SECRET" not in repr(message) and "tok-SECRET" not in str(message)


def test_terminal_bytes() -> None:
    message = p.decode(p.encode(EXAMPLES[9]))
    assert message.payload.raw() == b"ls\r"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", p.ErrorCode.malformed),
        ("[1, 2]", p.ErrorCode.malformed),
        ('{"v": 2, "type": "ack", "payload": {"of": "x"}}', p.ErrorCode.unsupported_version),
        ('{"v": true, "type": "ack", "payload": {"of": "x"}}', p.ErrorCode.unsupported_version),
        ('{"v": 1, "type": "reboot", "payload": {}}', p.ErrorCode.unknown_type),
        ('{"v": 1, "payload": {}}', p.ErrorCode.unknown_type),
        ('{"v": 1, "type": "ack", "payload": {}}', p.ErrorCode.invalid),
        ('{"v": 1, "type": "ack", "payload": {"of": "x"}, "extra": 1}', p.ErrorCode.invalid),
        (
            '{"v": 1, "type": "start_tunnel", "payload": {"session_id": "s", "node_name": "n",'
            ' "tunnel_token": "t", "services": ["telnet"]}}',
            p.ErrorCode.invalid,
        ),
        ('{"v": 1, "type": "terminal_data", "payload": {"session_id": "s", "data": "%%%"}}', p.ErrorCode.invalid),
        (
            '{"v": 1, "type": "terminal_resize", "payload": {"session_id": "s", "cols": 0, "rows": 5}}',
            p.ErrorCode.invalid,
        ),
        ("[" * 100_000 + "]" * 100_000, p.ErrorCode.malformed),
        ('"' + "x" * (p.MAX_FRAME_BYTES + 1) + '"', p.ErrorCode.too_large),
    ],
)
def test_bad_frames_get_a_typed_error(frame: str, code: p.ErrorCode) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(frame)
    assert caught.value.code == code
    message, reply = p.decode_or_error(frame)
    assert message is None
    answer = p.decode(reply)
    assert answer.type == "error" and answer.payload.code == code


def test_heartbeat_nodes_carry_roles_and_labels() -> None:
    report = p.NodeReport(
        name="n", status="ready", architecture="amd64", roles=["control-plane"], labels={"kubernetes.io/os": "linux"}
    )
    beat = p.Heartbeat(payload=p.HeartbeatPayload(cluster_id="c", nodes=[report]))
    assert p.decode(p.encode(beat)).payload.nodes[0].labels == {"kubernetes.io/os": "linux"}


def test_reply_id_matches_commands_to_answers() -> None:
    assert p.reply_id(p.Pong(id="m-9", payload=p.PongPayload(role="controller"))) == "m-9"
    assert p.reply_id(p.Ack(payload=p.AckPayload(of="m-8"))) == "m-8"
    assert p.reply_id(p.Error(id="x", payload=p.ErrorPayload(code=p.ErrorCode.invalid, message="m", of="m-7"))) == "m-7"


def test_agent_token_is_hmac_of_the_key() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"kdc_abc", b"kaiden-agent-v1", hashlib.sha256).hexdigest()
    assert p.agent_token("kdc_abc") == expected
    assert p.agent_token("kdc_abd") != expected and "kdc_abc" not in expected


def test_error_frame_carries_the_correlation_id() -> None:
    _, reply = p.decode_or_error('{"v": 1, "id": "abc", "type": "ack", "payload": {}}')
    assert p.decode(reply).payload.of == "abc"


def _assert_handled(frame) -> None:
    """Any input: a valid message, or an error frame that itself decodes — never another exception."""
    message, reply = p.decode_or_error(frame)
    assert (message is None) != (reply is None)
    if reply is not None:
        assert p.decode(reply).type == "error"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_handled(text: str) -> None:
    _assert_handled(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_handled(data: bytes) -> None:
    _assert_handled(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_is_handled(value) -> None:
    _assert_handled(json.dumps(value))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_messages_are_handled(message: p._Message, data) -> None:
    frame = json.loads(p.encode(message))
    target = frame if data.draw(st.booleans()) else frame["payload"]
    key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        target[key] = data.draw(json_values)
    _assert_handled(json.dumps(frame))


@pytest.mark.parametrize("correlation", ["", "x" * 129, 7, None])
def test_an_unusable_id_is_not_echoed_and_never_breaks_the_error_frame(correlation) -> None:
    """Found by hypothesis: `"id": ""` on a refused frame made building the error frame itself fail."""
    frame = json.dumps({"v": 1, "type": "ping", "id": correlation, "payload": {"node_name": 5}})
    message, error = p.decode_or_error(frame)
    assert message is None and error is not None
    reply = p.decode(error)
    assert isinstance(reply, p.Error) and reply.payload.code == p.ErrorCode.invalid and reply.payload.of is None
