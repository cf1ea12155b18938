from __future__ import annotations

import pytest

from kaitopy.inference.engine import RequestError
from kaitopy.inference.kaito_chat import result, translate, with_prompt_length


def test_prompt_with_kaitos_defaults() -> None:
    request = translate({"prompt": "Tell me a joke"}, "phi-3")
    assert request.kind == "completion"
    assert request.body == {
        "model": "phi-3",
        "stream": False,
        "prompt": "Tell me a joke",
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 10,
    }
    assert request.max_length == 200
    assert with_prompt_length(request, 5)["max_tokens"] == 195


def test_generate_kwargs_translate() -> None:
    request = translate(
        {
            "prompt": "hi",
            "generate_kwargs": {"max_new_tokens": 20, "do_sample": False, "top_p": 0.5, "num_beams": 1},
        },
        "m",
    )
    body = with_prompt_length(request, None)
    assert body["max_tokens"] == 20
    assert body["temperature"] == 0.0
    assert body["top_p"] == 0.5
    assert "num_beams" not in body
    assert request.max_length is None


def test_messages_become_a_chat_request() -> None:
    messages = [{"role": "user", "content": "hello"}]
    request = translate({"messages": messages, "generate_kwargs": {"max_length": 50}}, "m")
    assert request.kind == "chat"
    assert request.body["messages"] == messages
    assert "prompt" not in request.body
    assert with_prompt_length(request, 10)["max_tokens"] == 40


def test_max_length_without_a_token_count_bounds_the_output() -> None:
    request = translate({"prompt": "hi", "generate_kwargs": {"max_length": 50}}, "m")
    assert with_prompt_length(request, None)["max_tokens"] == 50


def test_max_length_shorter_than_the_prompt() -> None:
    request = translate({"prompt": "hi", "generate_kwargs": {"max_length": 5}}, "m")
    with pytest.raises(RequestError) as err:
        with_prompt_length(request, 5)
    assert err.value.status == 400
    assert err.value.param == "max_length"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"prompt": ""},
        {"prompt": 5},
        {"prompt": "a", "messages": []},
        {"prompt": "a", "generate_kwargs": []},
        {"prompt": "a", "generate_kwargs": {"max_length": 0}},
        {"prompt": "a", "generate_kwargs": {"max_new_tokens": "many"}},
        {"prompt": "a", "return_full_text": "yes"},
    ],
)
def test_bad_payloads(payload: dict[str, object]) -> None:
    with pytest.raises(RequestError) as err:
        translate(payload, "m")
    assert err.value.status == 400


def test_results_in_kaitos_shape() -> None:
    prompt = translate({"prompt": "Once upon"}, "m")
    completion = {"choices": [{"text": " a time", "finish_reason": "length"}]}
    assert result(prompt, completion) == {"Result": "Once upon a time"}
    only_new = translate({"prompt": "Once upon", "return_full_text": False}, "m")
    assert result(only_new, completion) == {"Result": " a time"}
    chat = translate({"messages": [{"role": "user", "content": "hi"}]}, "m")
    assert result(chat, {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}) == {
        "Result": "hello"
    }
