"""Scenes: named sets of params, prepared before a show and recalled on any stream by name or position.

`--scenes scenes.json` holds a JSON list of `{"name": ..., "params": {...}}`, in order (OSC and the page's keys
1–9 recall by position). Each scene is checked against the loaded model's params at start, so a bad file is one
clear error before the server takes a stream; a scene saved from a stream is written back to the file. One book
writes the file: a single server's own, or under `--replicas` the board's (server/cluster/board.py), which every
replica reads and writes through (server/cluster/board_scenes.py), so no replica rewrites the file from a stale list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pipelines.params import Params

RECALL_KEYS = 9  # keys 1-9 on the page
# A show's scenes are a page of buttons, not a database: the caps keep a saving loop from filling the disk or
# the memory of every replica that lists them.
MAX_SCENES = 256
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Scene:
    name: str
    params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}


class SceneBookUnavailable(Exception):
    """The book cannot be reached (under replicas: the board is restarting); nothing was read or changed."""


class Scenes(Protocol):
    """What the front ends use: a single server's SceneBook, or a replica's view of the board's book."""

    async def all(self) -> list[Scene]:
        """Every scene, in order."""
        ...

    async def find(self, key: str | int) -> Scene:
        """A scene by name or 1-based position; KeyError naming what there is otherwise."""
        ...

    async def store(self, name: str, params: dict[str, Any]) -> Scene:
        """Save (or replace) a scene; ValueError (a bad scene, a cap) or OSError (the file) and nothing changed."""
        ...


class SceneBook:
    """The scenes of a show, in order, and their file (if any), of which this book is the one writer."""

    def __init__(self, settings_model: type[Params] | None, path: Path | None = None) -> None:
        # settings_model None: the board's book, which holds scenes its replicas checked against their model.
        self.settings_model = settings_model
        self.path = path
        self._scenes = read_scenes(path, settings_model) if path is not None else []
        self._writing = asyncio.Lock()

    async def all(self) -> list[Scene]:
        return list(self._scenes)

    async def find(self, key: str | int) -> Scene:
        return find_scene(self._scenes, key)

    async def store(self, name: str, params: dict[str, Any]) -> Scene:
        scene = check_scene(self.settings_model, name, params)
        # Shielded: a client that goes away mid-write (Serve cancels its request) must not leave the file ahead of
        # the list, nor let the next store start from the list this one was replacing.
        return await asyncio.shield(self._store(scene))

    async def _store(self, scene: Scene) -> Scene:
        async with self._writing:  # one store at a time, each from the list the one before it left
            scenes = list(self._scenes)
            names = [existing.name for existing in scenes]
            if scene.name in names:
                scenes[names.index(scene.name)] = scene
            else:
                scenes.append(scene)
            if len(scenes) > MAX_SCENES:
                raise ValueError(
                    f"scene {scene.name!r} would be scene {len(scenes)}: a show holds at most {MAX_SCENES} scenes "
                    "(save over an existing one's name, or edit the --scenes file between shows)"
                )
            text = scenes_text(scenes)
            if len(text.encode()) > MAX_FILE_BYTES:
                raise ValueError(
                    f"scene {scene.name!r} would make the scenes file {len(text.encode())} bytes, over the limit of "
                    f"1 MiB ({MAX_FILE_BYTES} bytes)"
                )
            if self.path is not None:
                await asyncio.to_thread(write_atomically, self.path, text)
            self._scenes = scenes
        return scene


def find_scene(scenes: list[Scene], key: str | int) -> Scene:
    """A scene by name, or by 1-based position (an int, or a string of digits that is not a scene's name)."""
    if isinstance(key, str):
        for scene in scenes:
            if scene.name == key:
                return scene
        # A position is a few decimal digits: int() refuses "²" (a digit) and numbers of over 4300 digits.
        if not (key.isdecimal() and len(key) <= 6):
            raise KeyError(f"no scene named {key!r}; scenes: {', '.join(s.name for s in scenes) or 'none'}")
        key = int(key)
    if isinstance(key, float) and key.is_integer():
        key = int(key)
    if not isinstance(key, int) or isinstance(key, bool) or not 1 <= key <= len(scenes):
        raise KeyError(f"no scene {key!r}: there are {len(scenes)} scene(s), numbered from 1")
    return scenes[key - 1]


def check_scene(settings_model: type[Params] | None, name: Any, params: Any) -> Scene:
    """The scene if its name is allowed and its params are valid changes for this model; ValueError otherwise.
    Without a model (the board's book) only the shape is checked: its replicas checked the rest."""
    if settings_model is None:
        if not isinstance(name, str) or not isinstance(params, dict):
            raise ValueError(f"scene {name!r}: a name (a string) and params (an object) expected")
        return Scene(name, dict(params))
    name = check_scene_name(name)
    if not isinstance(params, dict):
        raise ValueError(f"scene {name!r}: params must be an object of name: value")
    try:
        settings_model().replace(params)
    except ValueError as error:  # ParamsError, not imported here (see check_scene_name)
        raise ValueError(f"scene {name!r}: {error}") from None
    return Scene(name, dict(params))


def check_scene_name(name: Any) -> str:
    """Scene names go into URLs and OSC addresses: the rule of stream names, and not all digits (positions)."""
    # Imported here, not above: the board keeps its book with this module and must not load the model's libraries
    # for it (the registry brings torch: 600 MB and 7 s more per board, measured), nor does it check names.
    from .registry import StreamError, check_stream_name

    try:
        check_stream_name(name)
    except StreamError:
        raise ValueError(f"scene name {name!r} is not allowed: use 1-64 characters of A-Z, a-z, 0-9, _ and -") from None
    if name.isdigit():
        raise ValueError(f"scene name {name!r} is all digits, which OSC reads as a position: add a letter")
    return name


def read_scenes(path: Path, settings_model: type[Params] | None) -> list[Scene]:
    """The scenes of a `--scenes` file, each checked; ValueError naming the file and the entry otherwise."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # no more than the cap: a wrong path to a huge file stays cheap
    except OSError as error:
        raise ValueError(f"--scenes {path}: cannot read it ({error.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"--scenes {path}: over the limit of 1 MiB ({MAX_FILE_BYTES} bytes)")
    try:
        entries = json.loads(data)
    except ValueError as error:  # not JSON, not UTF-8, or a number of too many digits
        raise ValueError(f"--scenes {path}: not JSON ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f'--scenes {path}: expected a JSON list of {{"name": ..., "params": {{...}}}}')
    if len(entries) > MAX_SCENES:
        raise ValueError(f"--scenes {path}: {len(entries)} scenes, over the limit of {MAX_SCENES}")
    scenes: list[Scene] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != {"name", "params"}:
            raise ValueError(f'--scenes {path}: entry {position} must be {{"name": ..., "params": {{...}}}}')
        try:
            scene = check_scene(settings_model, entry["name"], entry["params"])
        except ValueError as error:
            raise ValueError(f"--scenes {path}: entry {position}: {error}") from None
        if any(existing.name == scene.name for existing in scenes):
            raise ValueError(f"--scenes {path}: scene {scene.name!r} appears twice")
        scenes.append(scene)
    return scenes


def check_scenes(scenes: list[Scene], settings_model: type[Params], path: Path | None) -> None:
    """Every scene fits this model (a replica's, for the board's book at start); ValueError naming the first."""
    for position, scene in enumerate(scenes, start=1):
        try:
            check_scene(settings_model, scene.name, scene.params)
        except ValueError as error:
            raise ValueError(f"--scenes {path}: entry {position}: {error}") from None


def scenes_text(scenes: list[Scene]) -> str:
    return json.dumps([scene.as_dict() for scene in scenes], indent=2) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write then rename: a crash mid-write never leaves a half file for the next start to refuse."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            # On the disk before the rename: after a power cut the name holds the old list or the new, never an
            # empty file (a rename can reach the disk before the data it points to).
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
