"""The credential cache: one database look-up per key, however many requests miss at once."""

from __future__ import annotations

import asyncio

from amnex.api.auth import _TtlCache


async def test_concurrent_misses_share_one_load() -> None:
    cache: _TtlCache[str] = _TtlCache(ttl_s=5)
    loads = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal loads
        loads += 1
        await release.wait()
        return "context"

    # Given 50 requests that miss at the same moment
    waiting = [asyncio.create_task(cache.get_or_load("key", load)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    # Then one load served them all, and the next request is a hit
    assert await asyncio.gather(*waiting) == ["context"] * 50
    assert loads == 1
    assert cache.get("key") == (True, "context")


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_load() -> None:
    cache: _TtlCache[str] = _TtlCache(ttl_s=5)
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        return "context"

    impatient = asyncio.create_task(cache.get_or_load("key", load))
    patient = asyncio.create_task(cache.get_or_load("key", load))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == "context"


async def test_an_unknown_key_is_remembered_too() -> None:
    cache: _TtlCache[str] = _TtlCache(ttl_s=5)
    loads = 0

    async def load() -> str | None:
        nonlocal loads
        loads += 1
        return None

    assert await cache.get_or_load("bad", load) is None
    assert await cache.get_or_load("bad", load) is None
    assert loads == 1
