"""The few pieces of the DNS wire format (RFC 1035) the local nodes' cluster DNS needs: read one
question from a query, write an answer of A records. Pure, so every byte is unit-tested.

Only what a stub resolver sends is accepted: one question, no compression in it (a query has
nothing earlier to point at). Anything else gets FORMERR."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TYPE_A = 1
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_OPCODE = 0x7800
MAX_UDP = 512
"""The size a resolver without EDNS accepts; longer answers are cut and flagged truncated."""


class DnsFormatError(ValueError):
    """The query cannot be read: answered FORMERR (when at least its id could be read)."""


@dataclass(frozen=True)
class Question:
    name: str
    """Lower-cased, without the trailing dot ("web.default.svc.cluster.local")."""
    qtype: int
    qclass: int
    raw: bytes
    """The question section as sent, echoed in the answer."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    question: Question


def parse_query(data: bytes) -> Query:
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & _QR:
        raise DnsFormatError("a response, not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions; exactly one is supported")
    labels: list[str] = []
    pos = _HEADER.size
    while True:
        if pos >= len(data):
            raise DnsFormatError("name runs past the end")
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length & 0xC0:
            raise DnsFormatError("compressed or extended label in a question")
        label = data[pos : pos + length]
        if len(label) != length:
            raise DnsFormatError("label runs past the end")
        labels.append(label.decode("ascii", errors="replace").lower())
        pos += length
    if pos + 4 > len(data):
        raise DnsFormatError("question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    raw = data[_HEADER.size : pos + 4]
    return Query(qid, flags, Question(".".join(labels), qtype, qclass, raw))


def error_response(data: bytes, rcode: int) -> bytes | None:
    """An answer carrying only `rcode`, for a query too broken to parse (None without an id)."""
    if len(data) < 4:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    return _HEADER.pack(qid, _QR | (flags & (_OPCODE | _RD)) | rcode, 0, 0, 0, 0)


def build_response(
    query: Query,
    rcode: int,
    addresses: Sequence[ipaddress.IPv4Address] = (),
    *,
    ttl: int = 5,
    authoritative: bool = True,
    max_size: int = MAX_UDP,
) -> bytes:
    """The answer to `query`: its question echoed, then one A record per address (the name as
    a pointer to the question's). Records that do not fit in `max_size` are left out and the
    answer is flagged truncated, as a resolver expects."""
    flags = _QR | (query.flags & (_OPCODE | _RD)) | (_AA if authoritative else 0) | rcode
    records = [
        struct.pack("!HHHIH", 0xC000 | _HEADER.size, TYPE_A, CLASS_IN, ttl, 4) + a.packed for a in addresses
    ]
    room = max_size - _HEADER.size - len(query.question.raw)
    fitting = []
    for r in records:
        if room < len(r):
            flags |= _TC
            break
        fitting.append(r)
        room -= len(r)
    header = _HEADER.pack(query.id, flags, 1, len(fitting), 0, 0)
    return header + query.question.raw + b"".join(fitting)
