"""The training data: every supported file under the data directory, read into examples.

Rows may be chat conversations (`messages`: a list of {role, content}), prompt/completion pairs
(`prompt`/`completion`, Kaito's `context_column`/`response_column`, or `instruction` with
`response`/`output`), or plain text (`text`, Kaito's default response column). A row that fits
none of them is an error naming its file and row, since a silently dropped row skews the tuning.
Parquet is read with pyarrow; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaitopy.tuning.config import DatasetSettings

log = logging.getLogger(__name__)

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROLES = ("system", "user", "assistant", "tool")
# Kaito's instruction style and the common Alpaca spelling of it.
_INSTRUCTION_ANSWERS = ("response", "output", "answer")
_INSTRUCTION_INPUTS = ("input", "context")


class DataError(ValueError):
    """The data directory holds no usable examples, or a row is malformed."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One training example. `messages` for chat (the loss covers the assistant turns), or
    `text` alone (the loss covers every token)."""

    source: str  # "file, row N", for error messages
    messages: tuple[Message, ...] = ()
    text: str | None = None


def _dataset_path(data_dir: Path, given: str) -> Path:
    """DatasetConfig.dataset_path under the data directory. Kaito joins it to /mnt, so a path that
    starts with the data directory's own name ("data/train.jsonl") is read the same way."""
    root = data_dir.resolve()
    rel = Path(given.lstrip("/"))
    candidates = [root / rel]
    if rel.parts and rel.parts[0] == data_dir.name:
        candidates.append(root.joinpath(*rel.parts[1:]))
    for candidate in candidates:
        path = candidate.resolve()
        if path != root and root not in path.parents:
            raise DataError(f"DatasetConfig.dataset_path {given!r} points outside the data directory {root}")
        if path.exists():
            return path
    raise DataError(f"DatasetConfig.dataset_path {given!r}: {candidates[0]} does not exist")


def find_files(data_dir: Path, settings: DatasetSettings) -> list[Path]:
    if settings.dataset_path:
        path = _dataset_path(data_dir, settings.dataset_path)
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    else:
        if not data_dir.is_dir():
            raise DataError(f"the data directory {data_dir} does not exist")
        candidates = sorted(p for p in data_dir.rglob("*") if p.is_file())
    files: list[Path] = []
    for path in candidates:
        rel = path.relative_to(data_dir) if path.is_relative_to(data_dir) else path
        if any(part.startswith(".") for part in rel.parts):
            continue  # mount bookkeeping (..data links of projected volumes, lost+found markers)
        if settings.dataset_extension or path.suffix.lower() in EXTENSIONS:
            files.append(path)
        else:
            log.warning("skipping %s: not a data file (%s)", path, ", ".join(EXTENSIONS))
    return files


def _kind(path: Path, settings: DatasetSettings) -> str:
    return settings.dataset_extension or EXTENSIONS[path.suffix.lower()]


def _rows(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """(row number, row) pairs; rows count from 1 as a person reads the file (for JSON Lines and
    CSV, the line / data-row number)."""
    if kind == "jsonl":
        yield from _jsonl_rows(path)
    elif kind == "json":
        text = path.read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            # Plenty of .json datasets are JSON Lines in fact.
            yield from _jsonl_rows(path)
            return
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            doc = doc["data"]
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list):
            raise DataError(f"{path}: a JSON dataset must be a list of rows, not {type(doc).__name__}")
        yield from enumerate(doc, start=1)
    elif kind == "csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for number, row in enumerate(reader, start=1):
                if None in row:
                    raise DataError(f"{path}, row {number}: more fields than the header has columns")
                yield number, row
    elif kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable parquet file: {exc}") from None
        yield from enumerate(table.to_pylist(), start=1)
    else:  # pragma: no cover - kinds come from EXTENSIONS and the config's Literal
        raise DataError(f"{path}: unsupported dataset type {kind!r}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, row {number}: not valid JSON: {exc.msg}") from None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _messages(value: Any) -> tuple[Message, ...]:
    if isinstance(value, str):
        # CSV and some exports keep the conversation as a JSON string.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("messages is a string that is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out: list[Message] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role = item["role"]
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        content = item["content"]
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string, not {type(content).__name__}")
        out.append(Message(role, content))
    if not any(m.role == "assistant" for m in out):
        raise ValueError("messages has no assistant turn to learn from")
    return tuple(out)


def _pair(prompt: str, answer: str, system: Any = None) -> tuple[Message, ...]:
    head = (Message("system", _text(system, "system")),) if system else ()
    return (*head, Message("user", prompt), Message("assistant", answer))


def parse_row(row: Any, settings: DatasetSettings) -> tuple[tuple[Message, ...], str | None]:
    """The messages (or plain text) of one row; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, not {type(row).__name__}")
    present = {k for k, v in row.items() if v is not None and v != ""}
    messages_key = settings.messages_column or "messages"
    if messages_key in present:
        return _messages(row[messages_key]), None
    if settings.context_column and settings.context_column in present:
        if settings.response_column not in present:
            raise ValueError(
                f"has the context column {settings.context_column!r} but no response column "
                f"{settings.response_column!r}"
            )
        prompt = _text(row[settings.context_column], settings.context_column)
        return _pair(prompt, _text(row[settings.response_column], settings.response_column)), None
    if "prompt" in present or "completion" in present:
        if not {"prompt", "completion"} <= present:
            missing = "completion" if "prompt" in present else "prompt"
            raise ValueError(f"has {'prompt' if missing == 'completion' else 'completion'} but no {missing}")
        prompt, answer = _text(row["prompt"], "prompt"), _text(row["completion"], "completion")
        return _pair(prompt, answer, row.get("system")), None
    if "instruction" in present:
        answer_key = next((k for k in _INSTRUCTION_ANSWERS if k in present), None)
        if answer_key is None:
            raise ValueError(f"has instruction but none of {', '.join(_INSTRUCTION_ANSWERS)}")
        prompt = _text(row["instruction"], "instruction")
        extra = next((row[k] for k in _INSTRUCTION_INPUTS if k in present), None)
        if extra is not None:
            prompt = f"{prompt}\n\n{_text(extra, 'input')}"
        return _pair(prompt, _text(row[answer_key], answer_key), row.get("system")), None
    if settings.response_column in present:
        return (), _text(row[settings.response_column], settings.response_column)
    keys = ", ".join(sorted(row)) or "none"
    raise ValueError(
        f"no usable columns (it has: {keys}); expected messages, prompt/completion, "
        f"instruction/response, or {settings.response_column}"
    )


def load_examples(data_dir: Path, settings: DatasetSettings) -> list[Example]:
    """Every example under `data_dir`, in file order; DataError for a bad row or no data at all."""
    files = find_files(data_dir, settings)
    if not files:
        raise DataError(f"no training data under {data_dir}: expected {', '.join(sorted(EXTENSIONS))} files")
    examples: list[Example] = []
    for path in files:
        kind = _kind(path, settings)
        count = 0
        try:
            for number, row in _rows(path, kind):
                source = f"{path}, row {number}"
                try:
                    messages, text = parse_row(row, settings)
                except ValueError as exc:
                    raise DataError(f"{source}: {exc}") from None
                examples.append(Example(source, messages, text))
                count += 1
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise DataError(f"{path}: not valid CSV: {exc}") from None
        log.info("read %d examples from %s", count, path)
    if not examples:
        raise DataError(f"the data files under {data_dir} hold no rows: {', '.join(map(str, files))}")
    return examples
