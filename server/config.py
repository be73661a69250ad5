"""What `lcmlive serve` was told: access, limits, timeouts and video settings, in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import DEFAULT_MAX_BATCH
from .media.encoder import DEFAULT_BITRATE_KBPS


@dataclass(frozen=True)
class ServerConfig:
    token: str | None = None
    max_sessions: int = 4  # streams at once (publishers: the page's camera, WHIP)
    max_viewers: int = 8  # WHEP viewers per stream
    max_controllers: int = 8  # control sockets per stream (they send no offer, so no offer timeout frees them)
    target_fps: float | None = None  # each stream's starting target; None: by device
    max_batch: int = DEFAULT_MAX_BATCH  # frames of different streams run as one model call
    allow_origins: tuple[str, ...] = ()  # other web origins whose pages may use the server
    allow_hosts: tuple[str, ...] = ()  # host names besides localhost that the server is reached by ("*": any)
    offer_timeout: float = 15.0  # a publishing socket that sends no offer in this time is closed
    connect_timeout: float = 30.0  # a peer connection not connected in this time is closed
    idle_timeout: float = 30.0  # a stream whose source sends no frame for this long ends
    bitrate_kbps: int = DEFAULT_BITRATE_KBPS
    metrics_public: bool = False  # /metrics without the token (a scraper on a trusted network)
    scenes_path: Path | None = None  # the show's scenes (JSON), read at start and written back when one is saved
    osc_port: int | None = None  # OSC control over UDP; off unless given
    osc_host: str = "127.0.0.1"
    osc_allow: tuple[str, ...] = ()  # senders heard when OSC listens beyond localhost
    replica: str | None = None  # this server's Ray Serve replica id (`--replicas`), named in stats and /streams
