"""`lcmlive serve`: load the model, start the engine and the web app, print where to point a browser."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from pipelines import load_model, resolve_device
from pipelines.presets import CONTROLNETS, DEFAULT_CUDA_PRESET, OFFLINE_PRESET

from .engine import reserve_a_core_for_media
from .ice import restrict_ice_to_loopback
from .video_bitrate import DEFAULT_MAX_KBPS, DEFAULT_START_KBPS, configure_video_bitrate

log = logging.getLogger("lcmlive")

TINY_BANNER = f"""\
  no CUDA device: serving the built-in `{OFFLINE_PRESET}` model (random weights, so the output looks like
  coloured noise that follows your camera and your prompt). For a real picture, run on a CUDA machine with
  the weights in the Hugging Face cache, e.g. `hf download SimianLuo/LCM_Dreamshaper_v7` and then
  `lcmlive serve --model {DEFAULT_CUDA_PRESET}`."""


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the server is reachable beyond this machine and anyone reaching it may use it."""
    if host in ("127.0.0.1", "localhost", "::1") or token:
        return None
    return f"listening on {host} without a token: anyone who can reach this port can use the model (set --token)"


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
        "--controlnet", choices=sorted(CONTROLNETS), help="add a ControlNet of the model's family (canny)"
    )
    parser.add_argument(
        "--tiny-vae", action="store_true", help="TAESD / TAESDXL instead of the full VAE: faster, a little softer"
    )
    parser.add_argument(
        "--token", default=os.environ.get("LCMLIVE_TOKEN"), help="require this token (or set LCMLIVE_TOKEN)"
    )
    parser.add_argument("--max-sessions", type=int, default=4, help="most viewers at once (default 4)")
    parser.add_argument(
        "--target-fps", type=float, help="frame rate each viewer starts with (default 30 on CUDA, 8 on a CPU)"
    )
    parser.add_argument("--cert", help="TLS certificate (PEM): browsers give the camera only to https off localhost")
    parser.add_argument("--key", help="TLS private key (PEM) for --cert")
    parser.add_argument(
        "--ice-loopback",
        action="store_true",
        help="WebRTC over 127.0.0.1 only (tests, or browser and server on one machine)",
    )
    parser.add_argument(
        "--bitrate", type=int, default=DEFAULT_START_KBPS, help=f"video start kbps (default {DEFAULT_START_KBPS})"
    )
    parser.add_argument(
        "--max-bitrate", type=int, default=DEFAULT_MAX_KBPS, help=f"video max kbps (default {DEFAULT_MAX_KBPS})"
    )


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import ServerConfig, create_app

    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together")
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    configure_video_bitrate(args.bitrate, args.max_bitrate)
    if args.ice_loopback:
        restrict_ice_to_loopback()
    device = resolve_device(args.device)
    model_name = args.model
    if model_name == "auto":
        model_name = DEFAULT_CUDA_PRESET if device.type == "cuda" else OFFLINE_PRESET
    if model_name == OFFLINE_PRESET and device.type != "cuda":
        print(TINY_BANNER, file=sys.stderr)
    warning = exposure_warning(args.host, args.token)
    if warning:
        log.warning(warning)
    log.info("loading model %s on %s ...", model_name, device)
    model = load_model(model_name, device=device, controlnet=args.controlnet, tiny_vae=args.tiny_vae)
    with_controlnet = f" + {args.controlnet} ControlNet" if args.controlnet else ""
    log.info("model ready: %s%s (%s)", model_name, with_controlnet, str(model.dtype).removeprefix("torch."))
    threads = reserve_a_core_for_media(model.device)
    if model.device.type == "cpu":
        log.info("model runs on %d CPU thread(s); one core is left for video coding", threads)

    if args.target_fps is not None and not 1 <= args.target_fps <= 60:
        raise ValueError(f"--target-fps must be between 1 and 60, got {args.target_fps}")
    config = ServerConfig(token=args.token, max_sessions=args.max_sessions, target_fps=args.target_fps)
    app = create_app(model, config)
    scheme = "https" if args.cert else "http"
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    query = f"?token={args.token}" if args.token else ""
    print(f"\n  lcmlive is up: open {scheme}://{shown_host}:{args.port}/{query}\n", file=sys.stderr, flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ws="websockets-sansio",
            ws_max_size=1 << 20,  # larger messages are cut at the protocol level; up to this, a clear error
            ssl_certfile=args.cert,
            ssl_keyfile=args.key,
            log_level="warning",
            timeout_graceful_shutdown=3,
        )
    )
    # uvicorn re-raises Ctrl-C after its graceful shutdown; that is the normal way out, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    log.info("stopped: every session closed")
    return 0
