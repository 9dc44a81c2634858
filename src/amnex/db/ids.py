"""Storage: opaque, time-ordered identifiers (`msg_01J...`), so id order is creation order."""

from __future__ import annotations

import secrets
import time
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """`prefix_` + 26 Crockford base32 characters: 48-bit milliseconds, then 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    return f"{prefix}_{_encode(value)}"


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_floor(prefix: str, at: datetime) -> str:
    """The smallest id `new_id(prefix)` can make at `at` (to the millisecond): every id made
    earlier sorts below it, every id made then or later at or above it."""
    milliseconds = int(at.timestamp() * 1000)
    return f"{prefix}_{_encode(milliseconds << 80)}"


def looks_like_id(value: str, prefix: str) -> bool:
    """Cheap shape check: a malformed id is answered as not found without a query."""
    head, _, tail = value.partition("_")
    return head == prefix and len(tail) == 26 and all(c in _CROCKFORD for c in tail)
