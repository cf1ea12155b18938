"""Turning a growing decoded text into the deltas a client sees, with stop sequences honoured.

The generated tokens are decoded whole at each step (a token alone may be half a character or lose
its leading space); what was already sent is never taken back, so the last few characters are held
until they cannot be the start of a stop sequence. Streaming and non-streaming responses are both
built from these deltas, so their texts are the same.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete multi-byte character


class StopTextBuffer:
    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = 0  # characters of the decoded text already handed out
        self.stopped = False

    def feed(self, text: str) -> str:
        """The next delta given the whole decoded text so far; sets `stopped` on a stop sequence."""
        if self.stopped:
            return ""
        if self.stop:
            start = max(0, self.sent - self._hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._take(text, min(hits))
        end = len(text) - self._hold
        trimmed = text.rstrip(REPLACEMENT)
        end = min(end, len(trimmed))
        return self._take(text, end)

    def finish(self, text: str) -> str:
        """The rest of the text once generation ended (held characters included)."""
        if self.stopped:
            return ""
        delta = self.feed(text)
        if self.stopped:
            return delta
        return delta + self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        delta = text[self.sent : end]
        self.sent = end
        return delta


class IncrementalDetokenizer:
    """Generated text grown one token at a time in constant work per token.

    Decoding all generated tokens at every step costs time quadratic in the output; instead only the
    tokens since the last emitted boundary are decoded, after a few tokens of context so that the
    tokenizer's spacing and merging rules see what came before (the scheme vLLM uses). `context`
    primes it with the prompt's last tokens.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self._tokens = list(context)
        self._prefix = 0
        self._read = len(self._tokens)
        self.text = ""

    def add(self, token: int) -> str:
        """Append a token; return the text it completes ("" while a character is still partial)."""
        self._tokens.append(token)
        before = self._decode(self._tokens[self._prefix : self._read])
        after = self._decode(self._tokens[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._tokens)
        self.text += delta
        return delta
