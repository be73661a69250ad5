"""`lcmlive serve`: read the settings, load the model, start the web app (or Ray Serve replicas), print where to
point a browser."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

import uvicorn

from pipelines.control import CONTROL_KINDS
from pipelines.presets import DEFAULT_CUDA_PRESET, OFFLINE_PRESET

from .access import ANY_HOST
from .config import ServerConfig, settings_from_arguments
from .config import add_arguments as add_settings_arguments
from .engine import reserve_a_core_for_media
from .startup import load_served_model, prepare_media

log = logging.getLogger("lcmlive")


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
    """`lcmlive serve`'s flags: every setting of `ServeSettings`, and `--config FILE`."""
    add_settings_arguments(
        parser,
        names={
            "cuda_preset": DEFAULT_CUDA_PRESET,
            "offline_preset": OFFLINE_PRESET,
            "control_kinds": ", ".join(CONTROL_KINDS),
        },
    )


def main(args: argparse.Namespace) -> int:
    from .app import create_app

    settings = settings_from_arguments(args)
    server_config = settings.server_config()
    for warning in (exposure_warning(settings.host, settings.token), any_host_warning(server_config)):
        if warning:
            log.warning(warning)
    if settings.replicas is not None:
        from .cluster import serve_replicas

        return serve_replicas(settings)
    prepare_media(settings)
    model = load_served_model(settings)
    threads = reserve_a_core_for_media(model.device)
    if model.device.type == "cpu":
        log.info("model runs on %d CPU thread(s); one core is left for video coding", threads)

    app = create_app(model, server_config)
    print(f"\n  lcmlive is up: open {settings.page_url()}\n", file=sys.stderr, flush=True)
    server = TellingServer(
        app,
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            ws="websockets-sansio",
            ws_max_size=1 << 20,  # larger messages are cut at the protocol level; up to this, a clear error
            ssl_certfile=settings.cert,
            ssl_keyfile=settings.key,
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
