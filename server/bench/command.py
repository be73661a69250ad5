"""`lcmlive bench`: its flags, and which benchmark they pick (pipeline, --e2e, --adaptive, --av, --toy, ...)."""

from __future__ import annotations

import argparse
import importlib.util
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="preset name or local diffusers folder (default: tiny)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--tiny-vae", action="store_true", help="TAESD / TAESDXL instead of the full VAE")
    parser.add_argument("--size", type=int, help="square frame side in pixels (default 512; 256 through WebRTC)")
    parser.add_argument("--steps", type=int, help="LCM steps per frame, 1-4 (default 4; 2 through WebRTC)")
    parser.add_argument("--strength", type=float, default=0.5, help="img2img strength (default 0.5)")
    parser.add_argument("--frames", type=int, default=20, help="measured frames per way (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured frames first (default 2)")
    parser.add_argument("--mode", default="img2img", help="img2img, txt2img or both comma-separated (default img2img)")
    parser.add_argument(
        "--controlnet",
        default="none",
        help="none or ControlNet kinds (canny, depth), comma-separated: each alone against the guide (default none)",
    )
    parser.add_argument(
        "--double-buffer", action="store_true", help="also compare frames back to back with and without the executor"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and VAE decoder: the pipeline bench adds eager against compiled frames; --e2e "
        "serves the compiled model (for GPUs: slower on a CPU)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--e2e", action="store_true", help="WebRTC loopback through the server instead")
    parser.add_argument(
        "--adaptive", action="store_true", help="loopback with the model 2x slower half-way: does the rate hold?"
    )
    parser.add_argument(
        "--streams", help="N streams through the engine, one at a time and batched, for these counts (1,2,4)"
    )
    parser.add_argument(
        "--temporal", action="store_true", help="temporal consistency: warp error, flicker, tracking, per smoothing"
    )
    parser.add_argument(
        "--styles", action="store_true", help="style LoRAs: fps with none, an adapter, fused; switch cost"
    )
    parser.add_argument(
        "--viewers", help="WHIP in, WHEP out: server CPU per frame outside the model for these viewer counts (1,4)"
    )
    parser.add_argument(
        "--av",
        action="store_true",
        help="WHIP in, WHEP out: sound-minus-picture offset and latency per flash+beep, model 2x slower half-way",
    )
    parser.add_argument(
        "--toy", action="store_true", help="the toy model's numbers: VAE PSNR, follows the camera, prompt, motion"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="measured seconds: --e2e 15, --adaptive 40, --av 30, --viewers 15 a count, --streams 30 a count (default)",
    )
    parser.add_argument(
        "--target-fps", type=float, help="--adaptive: the target (default: what the largest size just holds)"
    )
    parser.add_argument("--plot", default="artifacts/adaptive.png", help="--adaptive: where to write the plot")


def main(args: argparse.Namespace) -> int:
    through_webrtc = args.e2e or args.adaptive or args.av or bool(args.viewers)
    engine_only = bool(args.streams) or args.temporal or args.styles
    args.size = args.size or (256 if through_webrtc or engine_only else 512)
    args.steps = args.steps or (2 if through_webrtc or engine_only else 4)
    if args.size % 64 or args.size < 64:
        raise SystemExit(f"lcmlive bench: --size must be a positive multiple of 64, got {args.size}")
    if args.frames < 1:
        raise SystemExit(f"lcmlive bench: --frames must be at least 1, got {args.frames}")
    others = args.adaptive or args.av or args.streams or args.temporal or args.styles or args.viewers or args.toy
    if args.compile and others:
        raise SystemExit("lcmlive bench: --compile goes with the pipeline bench and --e2e only")
    if args.adaptive:
        # Checked before anything runs: the plot comes at the end, after a minute of benchmark.
        if importlib.util.find_spec("matplotlib") is None:
            raise SystemExit(
                "lcmlive bench --adaptive: the plot needs matplotlib, from the `bench` extra: "
                "pip install 'lcmlive[bench]' (./lcmlive installs it)"
            )
        from . import adaptive

        args.seconds = args.seconds or 40.0
        result = adaptive.main(args)
    elif args.av:
        from . import av

        args.seconds = args.seconds or 30.0
        result = av.main(args)
    elif args.streams:
        from . import streams

        args.seconds = args.seconds or 30.0
        result = streams.main(args)
    elif args.temporal:
        from . import temporal

        result = temporal.main(args)
    elif args.styles:
        from . import styles

        result = styles.main(args)
    elif args.viewers:
        from . import viewers

        args.seconds = args.seconds or 15.0
        result = viewers.main(args)
    elif args.toy:
        from . import toy

        result = toy.main(args)
    elif args.e2e:
        from . import e2e

        args.seconds = args.seconds or 15.0
        result = e2e.main(args)
    else:
        from .pipeline import run_pipeline_bench

        result = run_pipeline_bench(args)
    if args.json:
        print(json.dumps(result))
    return 0
