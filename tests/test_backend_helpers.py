import pytest

from llmspool.consumers.backends import gemma
from llmspool.consumers.backends.base import StopMatcher
from llmspool.shared.protocol import ChatMessage


def feed_all(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    if not matcher.matched:
        out += matcher.flush()
    return out, matcher.matched


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ((), ["a", "b"], ("ab", False)),
        (("END",), ["hello E", "N", "D more"], ("hello ", True)),
        (("END",), ["hello E", "NX"], ("hello ENX", False)),
        (("END",), ["hello EN"], ("hello EN", False)),
        (("x", "yz"), ["aay", "z"], ("aa", True)),
        (("\n\n",), ["a\n", "\nb"], ("a", True)),
    ],
)
def test_stop_matcher(
    stops: tuple[str, ...], pieces: list[str], expected: tuple[str, bool]
) -> None:
    assert feed_all(stops, pieces) == expected


def test_stop_matcher_holds_back_partial_match() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abcST") == "abc"
    assert matcher.feed("OP") == ""
    assert matcher.matched


def test_gemma_template_folds_system_into_first_user_turn() -> None:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello."),
        ChatMessage(role="user", content="Bye"),
    ]
    assert gemma.render(messages) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
