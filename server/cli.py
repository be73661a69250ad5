"""The `lcmlive` command: `serve` runs the server, `render` makes a recording's master, `bench` measures the pipeline,
`soak` tries a server for leaks; `lcmlive --version` says which lcmlive it is."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import version


def version_parser() -> argparse.ArgumentParser:
    """`--version` alone: the installed package's version (pyproject.toml's, as pip recorded it)."""
    # No abbreviations: a command's own option that starts like it (`--v...`) must not print the version.
    parser = argparse.ArgumentParser(prog="lcmlive", add_help=False, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"lcmlive {version('lcmlive')}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    from . import serve
    from .bench import command as bench
    from .bench import soak
    from .render import command as render

    parser = argparse.ArgumentParser(
        prog="lcmlive", description="Real-time webcam stylisation with LCM.", parents=[version_parser()]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_arguments(commands.add_parser("serve", help="serve the browser client and stylise webcams"))
    render.add_arguments(
        commands.add_parser("render", help="render a recording again, every frame, into an MP4 master (no networking)")
    )
    bench.add_arguments(commands.add_parser("bench", help="measure the pipeline (no networking)"))
    soak.add_arguments(commands.add_parser("soak", help="hold streams, then storm a running server; check for leaks"))
    return parser


def main(argv: list[str] | None = None) -> int:
    # Answered before the commands' parsers are built: they import torch and diffusers (8.7 s here, on a busy 2-core
    # CPU; `--version` alone 0.06 s).
    version_parser().parse_known_args(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines import ModelUnavailableError

    try:
        if args.command == "serve":
            from . import serve

            return serve.main(args)
        if args.command == "render":
            from .render import command as render

            return render.main(args)
        if args.command == "bench":
            from .bench import command as bench

            return bench.main(args)
        if args.command == "soak":
            from .bench import soak

            return soak.main(args)
    except (ModelUnavailableError, ValueError) as error:
        print(f"lcmlive: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
