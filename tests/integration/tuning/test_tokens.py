"""Tokenization with the tiny model's chat template: labels only on the assistant turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaitopy.tuning.data import Example, Message
from kaitopy.tuning.tokens import IGNORE, TokenizeError, tokenize_all, tokenize_example


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.support.tinymodel import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _learned(tok: object, ids: list[int], labels: list[int]) -> list[str]:
    convert = tok.convert_ids_to_tokens  # type: ignore[attr-defined]
    return [convert(i) for i, label in zip(ids, labels, strict=True) if label != IGNORE]


def test_only_assistant_turns_carry_labels(tokenizer: object) -> None:
    example = Example(
        "t, row 1",
        (
            Message("system", "be good"),
            Message("user", "say red"),
            Message("assistant", "red sky"),
            Message("user", "say blue"),
            Message("assistant", "blue sea"),
        ),
    )
    item = tokenize_example(tokenizer, example, 512, True)
    assert _learned(tokenizer, item.input_ids, item.labels) == [
        "red",
        "sky",
        "<|end|>",
        "blue",
        "sea",
        "<|end|>",
    ]
    # The prompt side is all there, unlabelled.
    assert "<|user|>" in [tokenizer.convert_ids_to_tokens(i) for i in item.input_ids]  # type: ignore[attr-defined]


def test_plain_text_is_all_labelled(tokenizer: object) -> None:
    item = tokenize_example(tokenizer, Example("t, row 1", text="the cat"), 512, True)
    assert item.labels == item.input_ids
    assert _learned(tokenizer, item.input_ids, item.labels)[-1] == "<|end|>"


def test_truncation_and_its_absence(tokenizer: object) -> None:
    long = Example("f.jsonl, row 7", (Message("user", "say " * 40), Message("assistant", "red")))
    with pytest.raises(
        TokenizeError, match=r"f\.jsonl, row 7: \d+ tokens, over TokenizerParams.max_length 16"
    ):
        tokenize_all(tokenizer, [long], 16, False)
    # Truncated, the answer falls off: nothing left to learn from.
    with pytest.raises(TokenizeError, match="none of the 1 examples"):
        tokenize_all(tokenizer, [long], 16, True)


def test_template_without_prefix_stability_uses_last_turn(tmp_path: Path) -> None:
    from tests.support.tinymodel import build_tokenizer

    tokenizer = build_tokenizer(tmp_path)
    # Earlier assistant turns are rendered differently once more follow (as reasoning models'
    # templates drop earlier thinking).
    tokenizer.chat_template = (  # type: ignore[attr-defined]
        "{% for m in messages %}<|{{ m['role'] }}|>\n"
        "{% if m['role'] == 'assistant' and not loop.last %}ok"
        "{% else %}{{ m['content'] }}{% endif %}<|end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    example = Example(
        "t",
        (
            Message("user", "a"),
            Message("assistant", "red"),
            Message("user", "b"),
            Message("assistant", "blue"),
        ),
    )
    item = tokenize_example(tokenizer, example, 512, True)
    assert _learned(tokenizer, item.input_ids, item.labels) == ["blue", "<|end|>"]
