import pytest
from pydantic import ValidationError

from llmspool.shared.capabilities import refused_parameters
from llmspool.shared.messages import Job, JobKind, ReplyFrame, UnknownSchema
from llmspool.shared.protocol import ChatCompletionRequest, CompletionRequest


def chat(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


def test_unknown_fields_parse_but_are_refused_unless_passed_through() -> None:
    request = chat(some_future_field=1)
    assert request.model == "m"
    assert refused_parameters(request, "llama_cpp") == ["some_future_field"]
    assert refused_parameters(request, "openai") == []  # the upstream answers for it


def test_content_may_be_text_parts() -> None:
    request = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert request.messages[0].text() == "ab"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guided_regex": "a+"}, "guided_regex"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias"),
        ({"top_k": 5}, "top_k"),
        ({"store": True}, "store"),
    ],
)
def test_unhonoured_parameters_are_named(extra: dict[str, object], param: str) -> None:
    assert refused_parameters(chat(**extra), "fake") == [param]


def test_harmless_values_pass() -> None:
    harmless = chat(n=1, logprobs=False, tools=[], response_format={"type": "text"}, top_k=None)
    assert refused_parameters(harmless, "fake") == []


@pytest.mark.parametrize(
    "extra",
    [{"max_tokens": 0}, {"max_tokens": -1}, {"temperature": 3}, {"top_p": 0}, {"stop": ["a"] * 5}],
)
def test_bad_values_are_refused(extra: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        chat(**extra)


def test_job_round_trips_through_stream_fields() -> None:
    job = Job(request_id="r1", kind=JobKind.CHAT, model="m", body=chat(max_tokens=3), deadline=5.0)
    again = Job.from_fields(job.to_fields(), attempt=2)
    assert again.body == job.body and again.attempt == 2 and again.deadline == 5.0


def test_job_of_a_newer_schema_is_recognised() -> None:
    job = Job(
        request_id="r1",
        kind=JobKind.COMPLETION,
        model="m",
        body=CompletionRequest(model="m", prompt="x"),
        deadline=5.0,
    )
    fields = {**job.to_fields(), "v": "99"}
    with pytest.raises(UnknownSchema):
        Job.from_fields(fields)


def test_reply_frame_round_trip() -> None:
    frame = ReplyFrame(request_id="r", seq=3, text="hé", finish_reason="stop")
    again = ReplyFrame.loads(frame.dumps())
    assert again == frame and again.final
