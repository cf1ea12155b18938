from __future__ import annotations

from kaitopy.inference.textstream import IncrementalDetokenizer, StopTextBuffer


def stream(buffer: StopTextBuffer, steps: list[str]) -> list[str]:
    deltas = [buffer.feed(text) for text in steps]
    deltas.append(buffer.finish(steps[-1]))
    return deltas


def test_without_stops_everything_passes_at_once() -> None:
    deltas = stream(StopTextBuffer([]), ["a", "a b", "a b c"])
    assert deltas == ["a", " b", " c", ""]


def test_stop_split_across_steps_is_never_sent() -> None:
    buffer = StopTextBuffer(["END"])
    deltas = stream(buffer, ["one E", "one EN", "one END", "one END more"])
    assert "".join(deltas) == "one "
    assert buffer.stopped


def test_held_text_comes_out_at_the_end() -> None:
    buffer = StopTextBuffer(["xyz"])
    deltas = stream(buffer, ["ab", "abcd", "abcdx"])
    assert deltas == ["", "ab", "c", "dx"]
    assert "".join(deltas) == "abcdx"
    assert not buffer.stopped


def test_earliest_stop_wins() -> None:
    buffer = StopTextBuffer(["cd", "b"])
    assert buffer.finish("abcd") == "a"
    assert buffer.stopped


def test_half_a_character_waits() -> None:
    buffer = StopTextBuffer([])
    assert buffer.feed("caf\ufffd") == "caf"
    assert buffer.feed("café") == "é"


def test_detokenizer_keeps_spacing_from_the_context() -> None:
    words = {1: "hello", 2: "world", 3: "again"}

    def decode(ids: list[int]) -> str:
        return " ".join(words[i] for i in ids)  # a decoder that puts spaces between words

    detokenizer = IncrementalDetokenizer(decode, context=[1])
    assert [detokenizer.add(t) for t in (2, 3)] == [" world", " again"]
    assert detokenizer.text == " world again"


def test_detokenizer_waits_for_whole_characters() -> None:
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b"!"}

    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    detokenizer = IncrementalDetokenizer(decode, context=[])
    assert [detokenizer.add(t) for t in (1, 2, 3, 4)] == ["caf", "", "é", "!"]
    assert detokenizer.text == "café!"
