"""Scenes: named sets of params, prepared before a show and recalled on any stream by name or position.

`--scenes scenes.json` holds a JSON list of `{"name": ..., "params": {...}}`, in order (OSC and the page's keys
1–9 recall by position). Each scene is checked against the loaded model's params at start, so a bad file is one
clear error before the server takes a stream; a scene saved from a stream is written back to the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import ParamsError
from pipelines.params import Params

from .registry import StreamError, check_stream_name

RECALL_KEYS = 9  # keys 1-9 on the page


@dataclass(frozen=True)
class Scene:
    name: str
    params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}


class SceneBook:
    """The scenes of a show, in order; saved to their file (if any) whenever one is stored."""

    def __init__(self, settings_model: type[Params], path: Path | None = None) -> None:
        self.settings_model = settings_model
        self.path = path
        self._scenes: list[Scene] = []
        if path is not None:
            self._scenes = self._read(path)

    def __iter__(self):
        return iter(list(self._scenes))

    def __len__(self) -> int:
        return len(self._scenes)

    def find(self, key: str | int) -> Scene:
        """A scene by name, or by 1-based position (an int, or a string of digits that is not a scene's name)."""
        if isinstance(key, str):
            for scene in self._scenes:
                if scene.name == key:
                    return scene
            if not key.isdigit():
                raise KeyError(f"no scene named {key!r}; scenes: {', '.join(s.name for s in self._scenes) or 'none'}")
            key = int(key)
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        if not isinstance(key, int) or isinstance(key, bool) or not 1 <= key <= len(self._scenes):
            raise KeyError(f"no scene {key!r}: there are {len(self._scenes)} scene(s), numbered from 1")
        return self._scenes[key - 1]

    def store(self, name: str, params: dict[str, Any]) -> Scene:
        """Save (or replace) the scene `name`; written back to the file when the book has one."""
        scene = Scene(check_scene_name(name), self._checked(name, params))
        for index, existing in enumerate(self._scenes):
            if existing.name == name:
                self._scenes[index] = scene
                break
        else:
            self._scenes.append(scene)
        if self.path is not None:
            self._write(self.path)
        return scene

    def _checked(self, name: str, params: Any) -> dict[str, Any]:
        """The scene's params if they are valid changes for this model; ValueError naming the scene otherwise."""
        if not isinstance(params, dict):
            raise ValueError(f"scene {name!r}: params must be an object of name: value")
        try:
            self.settings_model().replace(params)
        except ParamsError as error:
            raise ValueError(f"scene {name!r}: {error}") from None
        return dict(params)

    def _read(self, path: Path) -> list[Scene]:
        try:
            entries = json.loads(path.read_text())
        except OSError as error:
            raise ValueError(f"--scenes {path}: cannot read it ({error.strerror})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"--scenes {path}: not JSON ({error})") from None
        if not isinstance(entries, list):
            raise ValueError(f'--scenes {path}: expected a JSON list of {{"name": ..., "params": {{...}}}}')
        scenes: list[Scene] = []
        for position, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or set(entry) != {"name", "params"}:
                raise ValueError(f'--scenes {path}: entry {position} must be {{"name": ..., "params": {{...}}}}')
            try:
                name = check_scene_name(entry["name"])
                params = self._checked(name, entry["params"])
            except ValueError as error:
                raise ValueError(f"--scenes {path}: entry {position}: {error}") from None
            if any(scene.name == name for scene in scenes):
                raise ValueError(f"--scenes {path}: scene {name!r} appears twice")
            scenes.append(Scene(name, params))
        return scenes

    def _write(self, path: Path) -> None:
        # Write then rename: a crash mid-write never leaves a half file for the next start to refuse.
        text = json.dumps([scene.as_dict() for scene in self._scenes], indent=2) + "\n"
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)


def check_scene_name(name: Any) -> str:
    """Scene names go into URLs and OSC addresses: the rule of stream names, and not all digits (positions)."""
    try:
        check_stream_name(name)
    except StreamError:
        raise ValueError(f"scene name {name!r} is not allowed: use 1-64 characters of A-Z, a-z, 0-9, _ and -") from None
    if name.isdigit():
        raise ValueError(f"scene name {name!r} is all digits, which OSC reads as a position: add a letter")
    return name
