"""`lcmlive serve --replicas N`: start Ray on this machine (or join `--ray-address`), deploy the replicas behind
Serve's proxy on `--host:--port`, relay OSC, and stop them all on Ctrl-C, every client told first.

A Ray of this machine alone keeps every Ray server on loopback, whatever `--host` the proxy listens on. Ray 2.60
still binds one port per replica on all interfaces (Serve's inter-deployment gRPC, hard-coded).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from ..config import ServeSettings
from ..frontends.osc import osc_socket
from ..scenes import check_scene_name, read_scenes

log = logging.getLogger("lcmlive")

APP_NAME = "lcmlive"
# Serve drains a stopping replica's open requests (page sockets included) for at most this long.
GRACEFUL_SHUTDOWN_SECONDS = 10.0
STOP_NOTICE_SECONDS = 5.0  # for the board to hear that the show stops
WAKE_SECONDS = 0.5  # how often the main thread wakes to run a signal handler that another thread received


def run(settings: ServeSettings) -> int:
    assert settings.replicas is not None, "serve runs this for --replicas N"
    config = settings.server_config()
    # Bound first: a port that is taken stops the command before Ray starts.
    osc_listener = osc_socket(settings.osc_host, settings.osc_port) if settings.osc_port is not None else None
    if config.scenes_path is not None:
        # So does a scene file that is not a list of named scenes (the board reads it again); the replicas check
        # the params, against their model.
        for position, scene in enumerate(read_scenes(config.scenes_path, None), start=1):
            try:
                check_scene_name(scene.name)
            except ValueError as error:
                raise ValueError(f"--scenes {config.scenes_path}: entry {position}: {error}") from None
    local = settings.ray_address is None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        # Ray takes a non-loopback address as the node's unless told that this is a cluster of one machine.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Imported only now: Ray reads both variables when it is imported.
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation, RequestRouterConfig
    from ray.serve.schema import LoggingConfig

    from .board import REPORT_INTERVAL_SECONDS, Board
    from .osc_relay import OscRelay
    from .replica import Replica
    from .router import ROUTING_STATS_PERIOD_SECONDS, StreamRouter

    if local:
        # Every replica gets one CPU: with fewer cores than replicas they share, rather than wait for a core.
        ray.init(address="local", include_dashboard=False, num_cpus=max(os.cpu_count() or 1, settings.replicas))
    else:
        ray.init(address=settings.ray_address)
    gpus = _replica_gpus(settings.device, ray.cluster_resources())
    replica_settings = settings.model_copy(
        update={
            # Inside a replica Ray shows only its own GPU, as device "cuda"; with no GPU, the CPU.
            "device": "cuda" if gpus else "cpu",
            # A replica's OSC port hears only the relay, which sends from this node.
            "osc_allow": (ray.util.get_node_ip_address(),),
        }
    )
    relay = None
    try:
        serve.start(
            # One proxy, on the head node: one address for the show, and one router that places every stream.
            proxy_location=ProxyLocation.HeadOnly,
            http_options=HTTPOptions(
                host=settings.host, port=settings.port, ssl_certfile=settings.cert, ssl_keyfile=settings.key
            ),
        )
        # serve.ingress is typed to return a Callable, so serve.deployment's function overload is the one read.
        replicas = Replica.options(  # pyright: ignore[reportFunctionMemberAccess]
            num_replicas=settings.replicas,
            # Ray sets OMP_NUM_THREADS to num_cpus: one model thread per CPU replica.
            ray_actor_options={"num_cpus": 1, "num_gpus": gpus},
            # A page's socket is a request for its whole life; the app keeps its own limits on streams and sockets.
            max_ongoing_requests=config.max_streams * (1 + config.max_controllers) + 64,
            # Ray annotates the config's **kwargs as dicts; its fields are what it takes.
            request_router_config=RequestRouterConfig(
                request_router_class=StreamRouter,  # pyright: ignore[reportArgumentType]
                request_routing_stats_period_s=ROUTING_STATS_PERIOD_SECONDS,  # pyright: ignore[reportArgumentType]
            ),
            graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_SECONDS,
            logging_config=LoggingConfig(enable_access_log=False),
        ).bind(replica_settings, Board.bind(config.scenes_path))
        log.info("starting %d replica(s) (%s each) ...", settings.replicas, "one GPU" if gpus else "one CPU")
        serve.run(replicas, name=APP_NAME, route_prefix="/")
        if osc_listener is not None:
            board = serve.get_deployment_handle("Board", APP_NAME)
            relay = OscRelay(osc_listener, config.osc_allow, lambda: board.reports.remote().result())
            relay.start()
        print(f"\n  lcmlive is up: open {settings.page_url()}\n", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        # Short sleeps: Python runs a signal's handler in the main thread only, and a Ctrl-C the kernel hands to
        # another of the process's threads (Ray's own, the OSC relay's) does not wake a sleeping main thread. With
        # an hour's sleep, two CI runs saw Ctrl-C go unanswered for 60 and 150 s, not even "stopping" logged.
        while True:
            time.sleep(WAKE_SECONDS)
    except KeyboardInterrupt:
        log.info("stopping: every stream ends")
    finally:
        if relay is not None:
            relay.stop()
        _stop(serve, local, REPORT_INTERVAL_SECONDS)
        if local:
            ray.shutdown()
    log.info("stopped: every stream ended")
    return 0


def _replica_gpus(device: str, resources: Mapping[str, float]) -> int:
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    return 1 if resources.get("GPU", 0) >= 1 else 0


def _stop(serve, local: bool, report_interval: float) -> None:
    """Tell the replicas to end their streams (their clients hear `shutting_down`), then delete the application."""
    from ray.exceptions import RayError

    if APP_NAME in serve.status().applications:
        try:
            serve.get_deployment_handle("Board", APP_NAME).stop.remote().result(timeout_s=STOP_NOTICE_SECONDS)
            time.sleep(2 * report_interval)  # every replica's next post hears it
        except (TimeoutError, RayError) as error:  # a board still starting, say: the streams end with their replicas
            log.warning("could not tell the replicas to end their streams first: %s", error)
        serve.delete(APP_NAME)
    if local:
        serve.shutdown()
