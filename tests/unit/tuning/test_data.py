"""Training data: every format read, and every bad row reported with its file and row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kaitopy.tuning.config import DatasetSettings
from kaitopy.tuning.data import DataError, Message, load_examples

DEFAULT = DatasetSettings()
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_and_row_style(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow comes with the tuning extra")
    import pyarrow as pa
    import pyarrow.parquet as pq

    _jsonl(tmp_path / "a.jsonl", [CHAT, {"prompt": "2+2", "completion": "4"}])
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "add", "input": "2 2", "output": "4"}]))
    with (tmp_path / "c.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["messages"])
        w.writeheader()
        w.writerow({"messages": json.dumps(CHAT["messages"])})
    pq.write_table(pa.table({"text": ["plain text row"]}), tmp_path / "d.parquet")
    (tmp_path / "README.txt").write_text("not data")

    examples = load_examples(tmp_path, DEFAULT)
    assert len(examples) == 5
    chat, pair, instruction, from_csv, text = examples
    assert chat.messages == (Message("user", "hi"), Message("assistant", "hello"))
    assert pair.messages == (Message("user", "2+2"), Message("assistant", "4"))
    assert instruction.messages == (Message("user", "add\n\n2 2"), Message("assistant", "4"))
    assert from_csv.messages == chat.messages
    assert text.text == "plain text row" and text.messages == ()
    assert chat.source.endswith("a.jsonl, row 1") and pair.source.endswith("a.jsonl, row 2")


def test_kaito_context_and_response_columns(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"question": "why", "answer": "because"}])
    settings = DatasetSettings(context_column="question", response_column="answer")
    (example,) = load_examples(tmp_path, settings)
    assert example.messages == (Message("user", "why"), Message("assistant", "because"))


def test_kaito_messages_column(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"conversation": CHAT["messages"]}])
    (example,) = load_examples(tmp_path, DatasetSettings(messages_column="conversation"))
    assert example.messages[1] == Message("assistant", "hello")


def test_dataset_path_selects_one_file(tmp_path: Path) -> None:
    _jsonl(tmp_path / "one.jsonl", [CHAT])
    _jsonl(tmp_path / "two.jsonl", [CHAT, CHAT])
    assert len(load_examples(tmp_path, DatasetSettings(dataset_path="two.jsonl"))) == 2
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path, DatasetSettings(dataset_path="three.jsonl"))
    with pytest.raises(DataError, match="outside the data directory"):
        load_examples(tmp_path, DatasetSettings(dataset_path="../etc/passwd"))


def test_dataset_path_as_kaito_writes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"  # mounted at /mnt/data; Kaito's dataset_path is relative to /mnt
    data.mkdir()
    _jsonl(data / "train.jsonl", [CHAT, CHAT, CHAT])
    assert len(load_examples(data, DatasetSettings(dataset_path="/data/train.jsonl"))) == 3


def test_malformed_json_line_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n{not json\n")
    with pytest.raises(DataError, match=r"chat\.jsonl, row 3: not valid JSON"):
        load_examples(tmp_path, DEFAULT)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "p"}, "has prompt but no completion"),
        ({"completion": "c"}, "has completion but no prompt"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "has no assistant turn"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages\\[0\\].role 'robot'"),
        ({"messages": [{"role": "assistant"}]}, "messages\\[0\\] must be an object with role and content"),
        ({"messages": []}, "must be a non-empty list"),
        ({"messages": "not json"}, "is a string that is not a JSON list"),
        ({"prompt": "p", "completion": 4}, "completion must be a string"),
        ({"prompt": "  ", "completion": "c"}, "prompt is empty"),
        ({"instruction": "do"}, "has instruction but none of response, output"),
        ({"title": "x", "body": "y"}, "no usable columns \\(it has: body, title\\)"),
        (["a", "list"], "a row must be an object"),
    ],
)
def test_bad_row_names_file_row_and_problem(tmp_path: Path, row: object, problem: str) -> None:
    _jsonl(tmp_path / "data.jsonl", [CHAT, row])
    with pytest.raises(DataError, match=rf"data\.jsonl, row 2: (messages )?{problem}"):
        load_examples(tmp_path, DEFAULT)


def test_bad_csv_row_counts_data_rows(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,\n")
    with pytest.raises(DataError, match=r"d\.csv, row 2: has prompt but no completion"):
        load_examples(tmp_path, DEFAULT)


def test_csv_row_with_extra_fields(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("prompt,completion\na,b,c\n")
    with pytest.raises(DataError, match=r"d\.csv, row 1: more fields"):
        load_examples(tmp_path, DEFAULT)


def test_bad_parquet_row(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow comes with the tuning extra")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x", None]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet, row 2: has prompt but no completion"):
        load_examples(tmp_path, DEFAULT)


def test_damaged_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow comes with the tuning extra")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_examples(tmp_path, DEFAULT)


def test_json_that_is_json_lines(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.json", [CHAT, CHAT])
    assert len(load_examples(tmp_path, DEFAULT)) == 2


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(tmp_path, DEFAULT)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no training data under"):
        load_examples(tmp_path, DEFAULT)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope", DEFAULT)


def test_files_without_rows(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n\n")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(DataError, match="hold no rows"):
        load_examples(tmp_path, DEFAULT)


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    _jsonl(tmp_path / "..data" / "x.jsonl", [{"bad": 1}])
    _jsonl(tmp_path / "ok.jsonl", [CHAT])
    assert len(load_examples(tmp_path, DEFAULT)) == 1
