"""Encode once, send to many: what a stream's picture feed and its sound feed share — subscribers, one task, close."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, Protocol, TypeVar


class Subscriber(Protocol):
    def stop(self) -> None: ...


Track = TypeVar("Track", bound=Subscriber)


class FanOut(Generic[Track]):
    """One output of a stream: the tracks of the viewers that receive it, and the one task that makes its packets
    (`_run`, started on demand) for all of them."""

    task_prefix = "fanout"

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: set[Track] = set()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.packets_dropped = 0  # over all subscribers, past ones too: packets a sender never took

    @property
    def subscribed(self) -> bool:
        """Whether anyone receives this output (read from the engine thread: a stale answer costs one frame)."""
        return bool(self._subscribers)

    async def close(self) -> None:
        """Stop making packets and end every subscriber's track. Idempotent."""
        self._closed = True
        for track in list(self._subscribers):
            track.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.task_prefix} {self.name} is closed")

    def _start_task(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"{self.task_prefix}-{self.name}")

    def _add(self, track: Track) -> None:
        self._subscribers.add(track)

    def _remove(self, track: Track) -> None:
        self._subscribers.discard(track)

    async def _run(self) -> None:
        raise NotImplementedError
