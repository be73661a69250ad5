"""`lcmlive serve`: load the model, start the engine and the web app, print where to point a browser."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

import uvicorn

from pipelines import ModelComponents, load_model, resolve_device
from pipelines.control import CONTROL_KINDS, parse_kinds
from pipelines.presets import DEFAULT_CUDA_PRESET, OFFLINE_PRESET

from .access import ANY_HOST, is_ip_literal
from .config import ServerConfig
from .engine import DEFAULT_MAX_BATCH, reserve_a_core_for_media
from .media.encoder import DEFAULT_BITRATE_KBPS
from .media.ice import restrict_ice_to_loopback

log = logging.getLogger("lcmlive")

# A DNS name (labels of letters, digits and hyphens), optionally with a leading dot for the names below it.
HOST_NAME = re.compile(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")

TINY_BANNER = f"""\
  no CUDA device: serving the built-in `{OFFLINE_PRESET}` model, a toy trained in this repository. It shows your
  camera restyled by the style words of the prompt (watercolor, neon, night, pencil, fire, ocean, sepia, ink,
  pop, negative, ...), softer than the camera; it draws nothing new. For a real picture, run on a CUDA machine
  with the weights in the Hugging Face cache, e.g. `hf download SimianLuo/LCM_Dreamshaper_v7` and then
  `lcmlive serve --model {DEFAULT_CUDA_PRESET}`."""


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the server is reachable beyond this machine and anyone reaching it may use it."""
    if host in ("127.0.0.1", "localhost", "::1") or token:
        return None
    return f"listening on {host} without a token: anyone who can reach this port can use the model (set --token)"


def any_host_warning(config: ServerConfig) -> str | None:
    if ANY_HOST not in config.allow_hosts:
        return None
    unless = "" if config.token else " (set --token)"
    return f"--allow-host '*': the Host check is off; a DNS-rebinding web page can drive this server{unless}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--model",
        default="auto",
        help=f"preset or local diffusers folder; auto = {DEFAULT_CUDA_PRESET} on CUDA, else {OFFLINE_PRESET}",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--controlnet",
        type=_control_kinds,
        default=(),
        help=f"ControlNets of the model's family, comma-separated: {', '.join(CONTROL_KINDS)} (e.g. canny,depth); "
        "each stream sets how much each one shapes its picture",
    )
    parser.add_argument(
        "--lora-dir",
        type=Path,
        help="a folder of style LoRAs (diffusers or kohya .safetensors): each file a style that every stream can "
        "pick live (the `style` param)",
    )
    parser.add_argument(
        "--tiny-vae", action="store_true", help="TAESD / TAESDXL instead of the full VAE: faster, a little softer"
    )
    parser.add_argument(
        "--token", default=os.environ.get("LCMLIVE_TOKEN"), help="require this token (or set LCMLIVE_TOKEN)"
    )
    defaults = ServerConfig()
    parser.add_argument(
        "--max-sessions", type=int, default=defaults.max_sessions, help="most streams (publishers) at once (default 4)"
    )
    parser.add_argument(
        "--max-viewers", type=int, default=defaults.max_viewers, help="most WHEP viewers per stream (default 8)"
    )
    parser.add_argument(
        "--max-controllers",
        type=int,
        default=defaults.max_controllers,
        help="most control sockets per stream (default 8)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (e.g. https://studio.example) whose pages may use this server; repeatable",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name this server is reached by besides localhost and IP addresses (a LAN name, a reverse "
        "proxy's name; .example.com for a domain and its subdomains); repeatable; '*' turns the check off",
    )
    parser.add_argument(
        "--offer-timeout",
        type=float,
        default=defaults.offer_timeout,
        help="seconds a publishing socket may wait before its offer (default 15)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.connect_timeout,
        help="seconds a peer connection may take to connect (default 30)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        help="seconds without a camera frame before a stream ends (default 30)",
    )
    parser.add_argument(
        "--target-fps", type=float, help="frame rate each viewer starts with (default 30 on CUDA, 8 on a CPU)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"at most this many streams' frames in one model call (default {DEFAULT_MAX_BATCH}; 1: each alone)",
    )
    parser.add_argument("--cert", help="TLS certificate (PEM): browsers give the camera only to https off localhost")
    parser.add_argument("--key", help="TLS private key (PEM) for --cert")
    parser.add_argument(
        "--ice-loopback",
        action="store_true",
        help="WebRTC over 127.0.0.1 only (tests, or browser and server on one machine)",
    )
    parser.add_argument(
        "--scenes", metavar="FILE", help='scenes: a JSON list of {"name", "params"}; saving a scene writes it back'
    )
    parser.add_argument("--osc-port", type=int, help="listen for OSC control on this UDP port (off by default)")
    parser.add_argument(
        "--osc-host", default="127.0.0.1", help="address for OSC (default 127.0.0.1; OSC has no authentication)"
    )
    parser.add_argument(
        "--osc-allow",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an IP address whose OSC messages are heard when --osc-host is not localhost; repeatable",
    )
    parser.add_argument(
        "--metrics-public", action="store_true", help="serve /metrics without the token (a trusted scraper network)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="run N replicas on Ray Serve, each with its own model and engine (one GPU each where the cluster has "
        "GPUs); needs lcmlive[ray]",
    )
    parser.add_argument(
        "--ray-address", help="with --replicas: join this Ray cluster (default: start one on this machine, loopback)"
    )
    parser.add_argument(
        "--bitrate",
        type=int,
        default=DEFAULT_BITRATE_KBPS,
        help=f"stylised video kbps, one encode per stream for all its viewers (default {DEFAULT_BITRATE_KBPS})",
    )


def main(args: argparse.Namespace) -> int:
    from .app import create_app

    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together")
    config = config_from_arguments(args)
    for warning in (exposure_warning(args.host, args.token), any_host_warning(config)):
        if warning:
            log.warning(warning)
    if args.replicas is not None:
        from .cluster import serve_replicas

        return serve_replicas(args)
    prepare_media(args)
    model = load_served_model(args)
    threads = reserve_a_core_for_media(model.device)
    if model.device.type == "cpu":
        log.info("model runs on %d CPU thread(s); one core is left for video coding", threads)

    app = create_app(model, config)
    scheme = "https" if args.cert else "http"
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    query = f"?token={args.token}" if args.token else ""
    print(f"\n  lcmlive is up: open {scheme}://{shown_host}:{args.port}/{query}\n", file=sys.stderr, flush=True)
    server = TellingServer(
        app,
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ws="websockets-sansio",
            ws_max_size=1 << 20,  # larger messages are cut at the protocol level; up to this, a clear error
            ssl_certfile=args.cert,
            ssl_keyfile=args.key,
            log_level="warning",
            # Keepalive: a socket whose peer stopped answering pings is closed, and its slot freed.
            ws_ping_interval=10.0,
            ws_ping_timeout=10.0,
            timeout_graceful_shutdown=3,
        ),
    )
    # uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the signal again with the previous handler:
    # a KeyboardInterrupt for both makes either the normal way out (exit 0), not an error or a death by signal.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    log.info("stopped: every stream ended")
    return 0


def prepare_media(args: argparse.Namespace) -> None:
    """Process-wide WebRTC settings (each Ray Serve replica makes them in its own process)."""
    # aioice logs four lines per connection at INFO: a busy show would bury everything else.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if args.ice_loopback:
        restrict_ice_to_loopback()


def _control_kinds(text: str) -> tuple[str, ...]:
    """`--controlnet canny,depth`: argparse turns the ValueError of an unknown kind into a usage error."""
    try:
        return parse_kinds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_served_model(args: argparse.Namespace) -> ModelComponents:
    """The model the command line asks for, on its device (a Ray Serve replica loads its own)."""
    device = resolve_device(args.device)
    model_name = args.model
    if model_name == "auto":
        model_name = DEFAULT_CUDA_PRESET if device.type == "cuda" else OFFLINE_PRESET
    if model_name == OFFLINE_PRESET and device.type != "cuda":
        print(TINY_BANNER, file=sys.stderr)
    log.info("loading model %s on %s ...", model_name, device)
    model = load_model(
        model_name, device=device, controlnet=args.controlnet, tiny_vae=args.tiny_vae, lora_dir=args.lora_dir
    )
    with_controlnet = f" + {' + '.join(args.controlnet)} ControlNet" if args.controlnet else ""
    with_styles = f", styles: {', '.join(model.style_names)}" if model.style_names else ""
    dtype = str(model.dtype).removeprefix("torch.")
    log.info("model ready: %s%s (%s)%s", model_name, with_controlnet, dtype, with_styles)
    return model


def config_from_arguments(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from the command line; ValueError for any that cannot work."""
    for flag in ("max_sessions", "max_viewers", "max_controllers"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("offer_timeout", "connect_timeout", "idle_timeout"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.target_fps is not None and not 1 <= args.target_fps <= 60:
        raise ValueError(f"--target-fps must be between 1 and 60, got {args.target_fps}")
    if not 1 <= args.max_batch <= 64:
        raise ValueError(f"--max-batch must be between 1 and 64, got {args.max_batch}")
    if not 100 <= args.bitrate <= 50_000:
        raise ValueError(f"--bitrate must be between 100 and 50000 kbps, got {args.bitrate}")
    if args.replicas is not None and args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    if args.ray_address is not None and args.replicas is None:
        raise ValueError("--ray-address goes with --replicas")
    if args.osc_port is not None and not 1 <= args.osc_port <= 65535:
        raise ValueError(f"--osc-port must be a UDP port (1-65535), got {args.osc_port}")
    origins = tuple(origin.rstrip("/") for value in args.allow_origin for origin in value.split(",") if origin)
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ValueError(f"--allow-origin takes an origin like https://host:port, got {origin!r}")
    hosts = [name.strip() for value in args.allow_host for name in value.split(",") if name.strip()]
    for name in hosts:
        if name != ANY_HOST and not HOST_NAME.fullmatch(name):
            raise ValueError(f"--allow-host takes a host name like studio.lan (no scheme or port), got {name!r}")
    if not is_ip_literal(args.host) and args.host != "localhost":
        hosts.append(args.host)  # the name it was told to listen on is one it is reached by
    return ServerConfig(
        token=args.token,
        max_sessions=args.max_sessions,
        max_viewers=args.max_viewers,
        max_controllers=args.max_controllers,
        target_fps=args.target_fps,
        max_batch=args.max_batch,
        allow_origins=origins,
        allow_hosts=tuple(hosts),
        offer_timeout=args.offer_timeout,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        bitrate_kbps=args.bitrate,
        metrics_public=args.metrics_public,
        scenes_path=Path(args.scenes) if args.scenes else None,
        osc_port=args.osc_port,
        osc_host=args.osc_host,
        osc_allow=tuple(address for value in args.osc_allow for address in value.split(",") if address),
    )


class TellingServer(uvicorn.Server):
    """uvicorn, but on Ctrl-C or SIGTERM every client hears `shutting_down` before its socket is closed.

    uvicorn closes the open WebSockets itself before the app's lifespan ends, so a goodbye sent from there would
    never arrive.
    """

    def __init__(self, app, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets=None) -> None:
        await self._app.state.shutdown()
        await super().shutdown(sockets)
