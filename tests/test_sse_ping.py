"""The keep-alive comment of a silent SSE stream, as the official openai client reads it."""

from __future__ import annotations

from openai._streaming import SSEDecoder

from llmspool.producer.sse import PING


def test_a_ping_between_events_makes_no_event_in_the_openai_client() -> None:
    wire = b'id: 1.1.0\ndata: {"a": 1}\n\n' + PING + PING + b'id: 1.2.0\ndata: {"b": 2}\n\n'
    decoder = SSEDecoder()
    events = [e for line in wire.decode().splitlines() if (e := decoder.decode(line)) is not None]
    assert [e.data for e in events] == ['{"a": 1}', '{"b": 2}']
