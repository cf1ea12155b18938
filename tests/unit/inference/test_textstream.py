from __future__ import annotations

from kaitopy.inference.textstream import StopTextBuffer


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
