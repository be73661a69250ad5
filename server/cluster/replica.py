"""One replica: the whole app (its own model, engine, streams and peer connections) behind Serve's proxy.

Signaling reaches it through the proxy; its WebRTC media does not: aiortc in this process gathers this node's
addresses (loopback only with `--ice-loopback`), so the media goes straight between the client and this node. It
reports its stream names to the router (routing stats) and its health, streams and metrics to the board, and keeps
its scenes on the board (board_scenes.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from ..app import create_app
from ..config import ServeSettings
from ..scenes import check_scenes
from ..startup import load_served_model, prepare_media
from .board import REPORT_INTERVAL_SECONDS
from .board_scenes import BoardScenes
from .views import cluster_routes

log = logging.getLogger(__name__)


@serve.deployment
@serve.ingress()
class Replica:
    async def __init__(self, settings: ServeSettings, board: DeploymentHandle) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.id = serve.get_replica_context().replica_id.unique_id
        self._node = ray.util.get_node_ip_address()
        self._board = board
        prepare_media(settings)
        # On a CPU, Ray gives the actor OMP_NUM_THREADS = its num_cpus (launch.py): replicas sharing a machine do
        # not each take every core, as `reserve_a_core_for_media` would have a lone server do.
        model = await asyncio.to_thread(load_served_model, settings)
        config = settings.server_config(replica=self.id)
        if config.osc_port is not None:
            # The show's OSC port is the relay's (osc_relay.py); this replica hears the relay on a port of its node.
            config = dataclasses.replace(config, osc_host=self._node, osc_port=0)
        scenes = await board.scenes.remote()

        def board_scenes(settings_model) -> BoardScenes:
            # The file's scenes, as the board read them, must fit this model: one clear error at start, as on a
            # single server.
            check_scenes(scenes, settings_model, config.scenes_path)
            return BoardScenes(board, settings_model)

        self._app = create_app(model, config, overrides=cluster_routes(self._reports), scene_book=board_scenes)
        self._reporter = asyncio.create_task(self._report_loop(), name=f"replica-{self.id}-report")
        log.info("replica %s ready on %s (pid %d)", self.id, self._node, os.getpid())

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._app

    async def record_routing_stats(self) -> dict[str, Any]:
        """What the router places by (Serve asks every ROUTING_STATS_PERIOD_SECONDS)."""
        return {"streams": self._app.state.registry.names}

    async def __del__(self) -> None:
        # No goodbye to the board: it may be gone already (its call would wait for a board that never comes back),
        # and the report goes stale by itself. A replica whose start failed (a scene its model refuses) has no task.
        if hasattr(self, "_reporter"):
            self._reporter.cancel()

    def _report(self) -> dict[str, Any]:
        state = self._app.state
        return {
            "health": {
                "id": self.id,
                "node": self._node,
                "pid": os.getpid(),
                "osc_port": state.osc_port,
                **state.health_report(),
            },
            "streams": [stream.summary() for stream in state.registry],
            "metrics": state.metrics.exposition().decode(),
        }

    async def _reports(self) -> list[dict[str, Any]]:
        """Every live replica's report, this one's fresh."""
        others = [report for report in await self._board.reports.remote() if report["health"]["id"] != self.id]
        return sorted([*others, self._report()], key=lambda report: report["health"]["id"])

    async def _report_loop(self) -> None:
        while True:
            try:
                if await self._board.post.remote(self.id, self._report()):
                    await self._app.state.shutdown()
            except RayError as error:  # the board restarting: the next post fills it again
                log.warning("replica %s could not post its report: %s", self.id, error)
            await asyncio.sleep(REPORT_INTERVAL_SECONDS)
