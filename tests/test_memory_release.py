"""MemoryReleaser: what ended sessions leave in reference cycles is freed soon after, once per burst."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest

from facecast.server.memory import MemoryReleaser


class _Node:
    """A stand-in for a session's peer: an object in a reference cycle, holding a buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.me = self


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    # The collector would otherwise run whenever enough objects were allocated: the test then could
    # not tell a release from luck.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _garbage_cycle() -> weakref.ref[_Node]:
    return weakref.ref(_Node())


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


@pytest.mark.usefixtures("no_automatic_gc")
def test_a_request_frees_cyclic_garbage() -> None:
    async def main() -> None:
        releaser = MemoryReleaser(delay_s=0.05)
        node = _garbage_cycle()
        await asyncio.sleep(0.2)
        assert node() is not None, "nothing collects a cycle without a request (the ratchet of D10)"
        releaser.request()
        await _until(lambda: releaser.releases == 1)
        assert node() is None
        await releaser.aclose()

    asyncio.run(main())


@pytest.mark.usefixtures("no_automatic_gc")
def test_requests_in_a_burst_share_one_release() -> None:
    async def main() -> None:
        releaser = MemoryReleaser(delay_s=0.2)
        nodes = []
        for _ in range(10):  # sessions ending together
            nodes.append(_garbage_cycle())
            releaser.request()
        await _until(lambda: releaser.releases >= 1)
        assert all(n() is None for n in nodes)
        await asyncio.sleep(0.4)
        assert releaser.releases == 1
        late = _garbage_cycle()  # a session ending after the release ran gets one of its own
        releaser.request()
        await _until(lambda: releaser.releases == 2)
        assert late() is None
        await releaser.aclose()

    asyncio.run(main())


def test_close_cancels_a_pending_release() -> None:
    async def main() -> None:
        releaser = MemoryReleaser(delay_s=5.0)
        releaser.request()
        await releaser.aclose()
        assert releaser.releases == 0
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "facecast-memory-release"]

    asyncio.run(main())
