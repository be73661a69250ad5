"""Disk space for recordings: what is free under a folder, and what a folder holds."""

from __future__ import annotations

import shutil
from pathlib import Path


def free_bytes(path: Path) -> int:
    """Bytes free to an unprivileged writer on the file system holding `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def folder_bytes(path: Path) -> int:
    """The sizes of the files directly in `path` (a recording's folder holds no subfolders)."""
    return sum(entry.stat().st_size for entry in Path(path).iterdir() if entry.is_file())


def describe_bytes(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"
