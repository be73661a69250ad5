"""A replica's scenes: the board's one book (board.py), read and written through awaited Ray handle calls.

Each replica checks a scene against its own model before it sends it; the board, which loads no model, counts the
scenes, writes the file and answers every replica from the same list, so a scene saved through one replica is
listed and recalled through every other at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from ..scenes import Scene, SceneBookUnavailable, check_scene, find_scene

if TYPE_CHECKING:
    from pipelines.params import Params

# A board that died comes back within seconds (Serve restarts it, and it reads the file again); a request waits
# for it no longer than this.
BOARD_TIMEOUT_SECONDS = 10.0


class BoardScenes:
    """The `Scenes` of one replica, all kept by the board."""

    def __init__(self, board: DeploymentHandle, settings_model: type[Params]) -> None:
        self._board = board
        self.settings_model = settings_model

    async def all(self) -> list[Scene]:
        return await _answer(self._board.scenes.remote())

    async def find(self, key: str | int) -> Scene:
        return find_scene(await self.all(), key)

    async def store(self, name: str, params: dict[str, Any]) -> Scene:
        scene = check_scene(self.settings_model, name, params)
        stored = await _answer(self._board.store_scene.remote(scene.name, scene.params))
        if isinstance(stored, str):  # the board's refusal: a cap, or the file
            raise ValueError(stored)
        return stored


async def _answer(response: DeploymentResponse | DeploymentResponseGenerator) -> Any:
    assert isinstance(response, DeploymentResponse)  # the board's handle is not a streaming one
    try:
        return await asyncio.wait_for(response, BOARD_TIMEOUT_SECONDS)
    except (RayError, asyncio.TimeoutError) as error:
        raise SceneBookUnavailable(f"the scenes are out of reach for now (the board: {error!r})") from None
