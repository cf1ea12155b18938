"""validation.parse_body's nesting limit: the walk it skips for bodies with few brackets must not let a
deeper body through."""

from __future__ import annotations

import json

import pytest

from kaitopy.inference.engine import RequestError
from kaitopy.inference.validation import MAX_JSON_DEPTH, parse_body


def nested(containers: int) -> bytes:
    """A body whose innermost value sits under `containers` objects/lists (the body object included)."""
    return b'{"a": ' + b"[" * (containers - 1) + b"1" + b"]" * (containers - 1) + b"}"


def test_the_deepest_accepted_body_and_one_level_more() -> None:
    # `containers` containers put their innermost value at depth containers + 1.
    assert parse_body(nested(MAX_JSON_DEPTH - 1))["a"]
    with pytest.raises(RequestError, match="nests deeper"):
        parse_body(nested(MAX_JSON_DEPTH))


def test_brackets_inside_strings_are_no_nesting() -> None:
    # More brackets than the limit, all in a string: the walk runs and finds the body flat.
    body = {"model": "m", "messages": [{"role": "user", "content": "[{" * 100}]}
    assert parse_body(json.dumps(body).encode()) == body


def test_deep_body_with_brackets_in_strings_is_still_refused() -> None:
    raw = b'{"s": "' + b"[" * 50 + b'", "a": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(RequestError, match="nests deeper"):
        parse_body(raw)
