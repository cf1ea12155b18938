"""Layer content as a stream with a cap on how much it may expand to.

A gzip layer is a stranger's compressed data: 1 MiB of it can inflate to 1 GiB (gzip's ratio
tops out near 1032:1), and `gzip.decompress` would hold all of it in memory. CappedReader
decompresses a chunk at a time (zlib's max_length bounds each step's output), hashes what comes
out, and fails as soon as the output passes the cap, so memory stays at one chunk and a bomb stops
after `cap` bytes of work.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from typing import BinaryIO

CHUNK = 1 << 20


class TooLarge(ValueError):
    """The stream expands past its cap."""


class CappedReader(io.RawIOBase):
    """A read-only stream of `source`'s content, gunzipped when `gzipped`, that raises TooLarge
    once more than `cap` bytes have come out. `digest()` is the sha256 of what was read."""

    def __init__(self, source: BinaryIO, cap: int, gzipped: bool, what: str) -> None:
        self._source = source
        self._cap = cap
        self._what = what
        # wbits 31: a gzip header and trailer, as layers have. Multi-member gzip is handled below.
        self._inflate: zlib._Decompress | None = zlib.decompressobj(wbits=31) if gzipped else None
        self._pending = b""  # compressed input zlib has not consumed yet
        self._eof = False
        self.count = 0
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._source.close()
        super().close()

    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), CHUNK)
        data = self._next(want)
        n = len(data)
        self.count += n
        if self.count > self._cap:
            raise TooLarge(f"{self._what} expands to more than the limit of {self._cap} bytes")
        self._hash.update(data)
        memoryview(buffer)[:n] = data
        return n

    def _next(self, want: int) -> bytes:
        if self._inflate is None:
            return self._source.read(want)
        while True:
            if not self._pending and not self._eof:
                self._pending = self._source.read(CHUNK)
                self._eof = not self._pending
            if self._inflate.eof:
                # A gzip member ended; more input is another member (gzip allows concatenation).
                rest = self._inflate.unused_data + self._pending
                if not rest and self._eof:
                    return b""
                self._inflate = zlib.decompressobj(wbits=31)
                self._pending = rest
            try:
                out = self._inflate.decompress(self._pending, want)
            except zlib.error as exc:
                raise ValueError(f"{self._what} is not valid gzip ({exc})") from None
            self._pending = self._inflate.unconsumed_tail
            if out:
                return out
            if self._eof and not self._pending and not self._inflate.eof:
                raise ValueError(f"{self._what} is not valid gzip (it ends mid-stream)")
