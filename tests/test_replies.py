"""Replies of several choices and logprobs: how a worker's writes become frames, and frames
become whole replies (the API's and a batch line's)."""

from __future__ import annotations

import asyncio
import time

from llmspool.batch import results
from llmspool.consumers.batching import CollectedReply
from llmspool.consumers.publisher import ReplyStream
from llmspool.shared import replies
from llmspool.shared.messages import Job, JobKind, ReplyFrame
from llmspool.shared.protocol import ChatCompletionRequest, ChatCompletionTokenLogprob, Usage


class Publisher:
    """Stands in for ReplyPublisher: records what is marked, settles waits at once."""

    def __init__(self) -> None:
        self.marked = 0

    def mark(self, stream: ReplyStream, urgent: bool) -> None:
        self.marked += 1

    async def flush_and_wait(self, stream: ReplyStream) -> None:
        return None


def lp(token: str) -> ChatCompletionTokenLogprob:
    return ChatCompletionTokenLogprob(token=token, logprob=-0.5, bytes=list(token.encode()))


def test_interleaved_choices_leave_as_frames_in_order() -> None:
    stream = ReplyStream(Publisher(), "r", 1, time.time() + 60, time.time())  # type: ignore[arg-type]
    stream.write("a", 1)
    stream.write("b", 1, 1, [lp("b")])
    stream.write("c", 1)
    stream.end_choice(0, "length")
    asyncio.run(stream.finish("stop", Usage(completion_tokens=3), index=1))
    frames = stream.take_frames()
    assert [(f.seq, f.choice, f.text, f.finish_reason, f.final) for f in frames] == [
        (1, 0, "a", None, False),
        (2, 1, "b", None, False),
        (3, 0, "c", "length", False),
        (4, 1, "", "stop", True),
    ]
    assert frames[1].logprobs == [lp("b")] and frames[0].logprobs is None
    assert ReplyFrame.loads(frames[2].dumps()).more  # a choice's end is not the reply's


def test_one_choice_coalesces_into_one_frame_as_before() -> None:
    stream = ReplyStream(Publisher(), "r", 1, time.time() + 60, time.time())  # type: ignore[arg-type]
    for word in ("a", "b", "c"):
        stream.write(word, 1)
    asyncio.run(stream.finish("length", Usage()))
    frames = stream.take_frames()
    assert [(f.text, f.tokens, f.index, f.final) for f in frames] == [("abc", 3, None, True)]


def test_a_batch_line_of_two_choices_with_logprobs() -> None:
    reply = CollectedReply("r")
    reply.write("x", 1, 1, [lp("x")])
    reply.write("y", 1, 0, [lp("y")])
    reply.end_choice(1, "stop")
    asyncio.run(reply.finish("length", Usage(prompt_tokens=2, completion_tokens=2), index=0))
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 2, "logprobs": True}
    )
    job = Job(request_id="r", kind=JobKind.CHAT, model="m", body=body, deadline=time.time() + 9)
    assert reply.final is not None
    out = results.response_body(job, reply.frames, reply.final)
    assert [c["message"]["content"] for c in out["choices"]] == ["y", "x"]
    assert [c["finish_reason"] for c in out["choices"]] == ["length", "stop"]
    assert out["choices"][1]["logprobs"]["content"][0]["token"] == "x"


def test_completion_logprobs_count_offsets_from_the_choices_start() -> None:
    frames = [
        ReplyFrame(request_id="r", seq=1, text="say "),  # an echoed prompt: no logprobs
        ReplyFrame(request_id="r", seq=2, text="hi there", logprobs=[lp("hi"), lp(" there")]),
        ReplyFrame(request_id="r", seq=3, finish_reason="stop"),
    ]
    reply = replies.completion("r", 0, "m", frames, None)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.text_offset == [4, 6]
    assert logprobs.tokens == ["hi", " there"] and logprobs.top_logprobs == [{}, {}]
