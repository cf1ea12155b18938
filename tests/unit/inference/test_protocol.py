from __future__ import annotations

from typing import Any

import pytest

from kaitopy.inference.engine import RequestError
from kaitopy.inference.protocol import parse_messages, parse_prompt, parse_sampling


def test_sampling_fields() -> None:
    sampling = parse_sampling(
        {
            "max_tokens": 10,
            "temperature": 0,
            "top_p": 0.9,
            "top_k": -1,
            "stop": "x",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    )
    assert sampling.max_tokens == 10
    assert sampling.greedy
    assert sampling.top_k is None
    assert sampling.stop == ["x"]
    assert sampling.seed == 3
    assert sampling.stream and sampling.include_usage and sampling.ignore_eos


def test_max_completion_tokens_wins() -> None:
    assert parse_sampling({"max_tokens": 5, "max_completion_tokens": 7}).max_tokens == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": []}, "stream_options"),
        ({"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_bad_sampling(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_sampling(body)
    assert err.value.status == 400
    assert err.value.param == param


def test_messages_flatten_text_parts() -> None:
    messages = parse_messages(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ]
        }
    )
    assert [m["content"] for m in messages] == ["be brief", "ab", ""]


@pytest.mark.parametrize(
    "messages",
    [None, [], "hi", [1], [{"content": "no role"}], [{"role": "user", "content": [{"type": "image_url"}]}]],
)
def test_bad_messages(messages: Any) -> None:
    with pytest.raises(RequestError) as err:
        parse_messages({"messages": messages})
    assert err.value.status == 400


def test_prompts() -> None:
    assert parse_prompt({"prompt": "hi"}) == "hi"
    assert parse_prompt({"prompt": ["hi"]}) == "hi"
    assert parse_prompt({"prompt": [1, 2, 3]}) == [1, 2, 3]
    assert parse_prompt({"prompt": [[1, 2]]}) == [1, 2]
    for bad in (None, 5, [], ["a", "b"], [1, -2], {"x": 1}):
        with pytest.raises(RequestError):
            parse_prompt({"prompt": bad})
