"""The board: every replica's latest report (health, streams, metrics), for the views that cover all replicas.

A request through the proxy reaches one replica; `/health`, `/streams` and `/metrics` must speak for all of them.
Each replica posts its report every REPORT_INTERVAL_SECONDS; a report older than STALE_SECONDS is a replica that
died (a crashed process posts nothing more), and drops out. The answer to a post says whether the show is stopping:
Serve drains a replica's open requests before its app hears of the shutdown, and a page's socket is an open
request until its stream ends, so the replicas must end their streams first.

The board also keeps the show's scenes: one book and the one writer of the `--scenes` file, which every replica
reads and writes through (board_scenes.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import serve

from ..scenes import Scene, SceneBook

REPORT_INTERVAL_SECONDS = 1.0
STALE_SECONDS = 5.0


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},  # a post per replica per second
)
class Board:
    def __init__(self, scenes_path: Path | None = None) -> None:
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._stopping = False
        # Read again if Serve restarts the board: the file holds every scene stored until then.
        self._scenes = SceneBook(None, scenes_path)

    def post(self, replica: str, report: dict[str, Any]) -> bool:
        """Keep the replica's report; True once the show is stopping (the replica then ends its streams)."""
        self._reports[replica] = (time.monotonic(), report)
        return self._stopping

    def stop(self) -> None:
        self._stopping = True

    def reports(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._reports = {key: entry for key, entry in self._reports.items() if now - entry[0] < STALE_SECONDS}
        return [report for _, (_, report) in sorted(self._reports.items())]

    async def scenes(self) -> list[Scene]:
        return await self._scenes.all()

    async def store_scene(self, name: str, params: dict[str, Any]) -> Scene | str:
        """The scene as stored, or why it was not (a cap, the file): the replica's client gets `422 bad_scene`."""
        try:
            return await self._scenes.store(name, params)
        except (ValueError, OSError) as error:
            return str(error)
