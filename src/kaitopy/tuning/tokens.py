"""Examples to token ids and labels, with the loss on what the model should learn to say.

Chat examples go through the tokenizer's chat template; only the assistant turns (their text and
the template's end-of-turn marker) carry labels, everything else is -100. The spans are found by
rendering the conversation up to each assistant turn and comparing the prefixes, so any template
works that renders earlier turns the same way whatever follows them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kaitopy.tuning.data import Example, Message

log = logging.getLogger(__name__)

IGNORE = -100

# For tokenizers without a chat template (base models): plain role-tagged turns.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class TokenizeError(ValueError):
    pass


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    source: str

    @property
    def trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(tokenizer: Any, messages: tuple[Message, ...], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    return str(text)


def assistant_spans(tokenizer: Any, messages: tuple[Message, ...]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    stable = True
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (upto.startswith(before) and full.startswith(upto)):
            stable = False
            break
        spans.append((len(before), len(upto)))
    if stable:
        return full, spans
    # The template rewrites earlier turns depending on later ones: learn the last answer only.
    last = max(i for i, m in enumerate(messages) if m.role == "assistant")
    before = _render(tokenizer, messages[:last], True)
    upto = _render(tokenizer, messages[: last + 1], False)
    if not upto.startswith(before):
        raise TokenizeError("the chat template does not render the prompt as a prefix of the conversation")
    return upto, [(len(before), len(upto))]


def _labels_from_offsets(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    labels: list[int] = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(token if inside else IGNORE)
    return labels


def tokenize_example(tokenizer: Any, example: Example, max_length: int, truncate: bool) -> Tokenized:
    if example.messages:
        text, spans = assistant_spans(tokenizer, example.messages)
        if getattr(tokenizer, "is_fast", False):
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            labels = _labels_from_offsets(ids, [tuple(o) for o in enc["offset_mapping"]], spans)
        else:
            ids, labels = [], []
            cursor = 0
            for start, end in spans:
                prompt_ids = tokenizer(text[cursor:start], add_special_tokens=False)["input_ids"]
                answer_ids = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
                ids += [*prompt_ids, *answer_ids]
                labels += [IGNORE] * len(prompt_ids) + list(answer_ids)
                cursor = end
    else:
        assert example.text is not None  # an Example is messages or text
        text = example.text
        if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        labels = list(ids)
    if len(ids) > max_length:
        if not truncate:
            raise TokenizeError(
                f"{len(ids)} tokens, over TokenizerParams.max_length {max_length} (and truncation is off)"
            )
        ids, labels = ids[:max_length], labels[:max_length]
    return Tokenized(ids, labels, example.source)


def tokenize_all(tokenizer: Any, examples: list[Example], max_length: int, truncate: bool) -> list[Tokenized]:
    out: list[Tokenized] = []
    dropped = 0
    for example in examples:
        try:
            item = tokenize_example(tokenizer, example, max_length, truncate)
        except Exception as exc:
            raise TokenizeError(f"{example.source}: {exc}") from None
        if item.trainable == 0:
            dropped += 1
            log.warning(
                "%s: no tokens to learn from after truncation to %d; skipped", example.source, max_length
            )
            continue
        out.append(item)
    if not out:
        raise TokenizeError(f"none of the {len(examples)} examples has tokens to learn from")
    if dropped:
        log.warning("skipped %d of %d examples", dropped, len(examples))
    return out
