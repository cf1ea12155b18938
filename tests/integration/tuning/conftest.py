"""A tiny model and a small chat dataset, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = ["red", "green", "blue", "cat", "dog", "sky", "sea", "tree", "sun", "moon"]


def chat_rows(n: int = 16) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "answer with colors"},
                    {"role": "user", "content": f"say {a}"},
                    {"role": "assistant", "content": f"{a} {b} {a} {b}"},
                ]
            }
        )
    return rows


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    (data / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    return data
