"""The web app on one port: pages, /health, /params/schema, /metrics, the /ws socket, WHIP, WHEP, REST; and OSC.

It builds the parts (engine, registry of streams, peer connections) and hands each front end the registry; the
front ends never reach the engine or each other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from pipelines import ModelComponents, PromptCache, params_json_schema, params_model_for
from pipelines.batch import stylise_batch
from pipelines.compiled import CompiledModel, compile_model, ladder_sizes
from pipelines.params import Params

from .access import AccessGate
from .config import ServerConfig
from .engine import Engine
from .frontends.osc import osc_socket, start_osc
from .frontends.osc_send import SoundSender
from .frontends.pages import page_routes
from .frontends.rest import rest_routes
from .frontends.websocket import PageSocket, page_socket
from .frontends.whep import whep_routes
from .frontends.whip import whip_routes
from .media.peers import PeerConnections
from .metrics import Metrics
from .pacing import (
    DEFAULT_MAX_RESOLUTION,
    DEFAULT_MIN_RESOLUTION,
    DEFAULT_TARGET_FPS,
    pacing_params_model,
    settings_model,
)
from .registry import StreamRegistry
from .scenes import SceneBook, Scenes

log = logging.getLogger(__name__)

# The pages and their scripts hold nothing secret; the token guards what they call.
OPEN_PATHS = ("/", "/view", "/control", "/client")
SHUTDOWN_MESSAGE = "the server is shutting down"
# The camera the page asks for (client/lib/camera.js): --compile makes its sizes on the ladder before serving.
PAGE_CAMERA = (640, 480)


def create_app(
    model: ModelComponents,
    config: ServerConfig,
    overrides: Sequence[BaseRoute] = (),
    scene_book: Callable[[type[Params]], Scenes] | None = None,
) -> Starlette:
    """The ASGI app serving one loaded model to up to `config.max_streams` streams.

    `overrides` come before the app's own routes (a Ray Serve replica's /health, /streams and /metrics of all
    replicas); `scene_book` makes the scenes from the settings model in place of the `--scenes` file's own book (a
    replica's view of the board's)."""
    parts = build_parts(model, config, scene_book)
    app = Starlette(
        routes=[*overrides, *routes(parts)], middleware=middleware(config), lifespan=partial(lifespan, parts)
    )
    # What the server around the app reaches: the uvicorn subclass, a replica's reports, tests and benchmarks.
    app.state.engine = parts.engine
    app.state.registry = parts.registry
    app.state.sockets = parts.sockets
    app.state.shutdown = partial(shutdown, parts)
    app.state.scenes = parts.scenes
    app.state.metrics = parts.metrics
    app.state.health_report = partial(health_report, parts)
    app.state.compiled_at_start = parts.compiled_at_start
    app.state.osc_port = parts.osc_listener.getsockname()[1] if parts.osc_listener is not None else None
    return app


@dataclass
class Parts:
    """What one app serves with: built once from the model and the config, before serving."""

    model: ModelComponents
    config: ServerConfig
    engine: Engine
    peers: PeerConnections
    metrics: Metrics
    registry: StreamRegistry
    scenes: Scenes
    settings: type[Params]  # every param of a stream, the pipeline's and the server's
    schema: dict  # what every front end validates against, as the pages build their controls from it
    osc_listener: socket.socket | None
    compiled: CompiledModel | None = None  # --compile: the model's compiled UNet and VAE decoder
    compile_sizes: list[tuple[int, int]] = field(default_factory=list)  # what --compile makes before serving
    compile_state: str = "off"  # "compiling" until those sizes are made, then "ready" (or "failed")
    compiled_at_start: asyncio.Event = field(default_factory=asyncio.Event)  # set when compiling is no more
    sockets: set[PageSocket] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def build_parts(
    model: ModelComponents, config: ServerConfig, scene_book: Callable[[type[Params]], Scenes] | None = None
) -> Parts:
    # Compiling is lazy: each graph is made on the engine thread, when warming or when a frame first needs it.
    compiled = compile_model(model) if config.compile else None
    engine = Engine(model.device, max_batch=config.max_batch, stylise=compiled.stylise if compiled else stylise_batch)
    peers = PeerConnections()
    device = model.device.type
    pacing_model = pacing_params_model(
        DEFAULT_MAX_RESOLUTION.get(device, 512),
        config.target_fps or DEFAULT_TARGET_FPS.get(device, 30.0),
        DEFAULT_MIN_RESOLUTION.get(device, 128),
    )
    pacing = pacing_model()
    ladder = ladder_sizes(PAGE_CAMERA, pacing.max_resolution, pacing.min_resolution)
    compile_sizes = list(config.compile_sizes or ladder)
    settings = settings_model(params_model_for(model), pacing_model)
    # A bad scene file is one clear ValueError, before serving.
    scenes = scene_book(settings) if scene_book is not None else SceneBook(settings, config.scenes_path)
    metrics = Metrics(model.device)
    # Bound now: a port that is taken stops the start, not the first OSC message.
    osc_listener = osc_socket(config.osc_host, config.osc_port) if config.osc_port is not None else None
    registry = StreamRegistry(engine, model, PromptCache(), pacing_model, peers, config, metrics)
    metrics.read_streams(lambda: list(registry))
    return Parts(
        model=model,
        config=config,
        engine=engine,
        peers=peers,
        metrics=metrics,
        registry=registry,
        scenes=scenes,
        settings=settings,
        schema=params_json_schema(params_model_for(model), pacing_model),
        osc_listener=osc_listener,
        compiled=compiled,
        compile_sizes=compile_sizes if compiled else [],
        compile_state="compiling" if compiled else "off",
    )


def routes(parts: Parts) -> list[BaseRoute]:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse(health_report(parts))

    async def params_schema(request: Request) -> JSONResponse:
        return JSONResponse(parts.schema)

    async def metrics_exposition(request: Request) -> Response:
        return Response(parts.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def signaling(websocket: WebSocket) -> None:
        await page_socket(websocket, parts.registry, parts.sockets)

    return [
        *page_routes(),
        Route("/health", health),
        Route("/params/schema", params_schema),
        Route("/metrics", metrics_exposition),
        WebSocketRoute("/ws", signaling),
        *whip_routes(parts.registry),
        *whep_routes(parts.registry),
        *rest_routes(parts.registry, parts.scenes),
    ]


def middleware(config: ServerConfig) -> list[Middleware]:
    return [
        # Outermost: a CORS preflight from an allowed origin is answered before anything asks for a token.
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.allow_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location"],
        ),
        Middleware(
            AccessGate,
            token=config.token,
            allow_origins=config.allow_origins,
            allow_hosts=config.allow_hosts,
            open_paths=OPEN_PATHS + (("/metrics",) if config.metrics_public else ()),
        ),
    ]


@asynccontextmanager
async def lifespan(parts: Parts, app: Starlette) -> AsyncIterator[None]:
    parts.engine.start()
    compiled = parts.compiled
    warming = asyncio.create_task(warm_compiled(parts, compiled), name="lcmlive-compile") if compiled else None
    osc = None
    if parts.osc_listener is not None:
        osc, _ = await start_osc(
            parts.registry, parts.scenes, parts.settings, parts.metrics, parts.osc_listener, parts.config.osc_allow
        )
    sound_sender = None
    if parts.config.osc_send:
        sound_sender = SoundSender(parts.registry, parts.config.osc_send)
        await sound_sender.start()
    try:
        yield
    finally:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        if sound_sender is not None:
            sound_sender.close()
        if osc is not None:
            osc.close()
        await shutdown(parts)


async def warm_compiled(parts: Parts, compiled: CompiledModel) -> None:
    """--compile: each size's graphs made on the engine thread, one size per call, largest first (where a stream
    starts), while the event loop goes on serving; a stream that comes meanwhile runs between two sizes."""
    start = time.perf_counter()
    try:
        for size in parts.compile_sizes:
            await parts.engine.call(partial(compiled.warm, size))
    except Exception:
        if parts.stopping.is_set():  # the engine stopped under it: the server is shutting down
            return
        parts.compile_state = "failed"
        log.exception("compiling failed: frames of the sizes left compile when they first run")
        return
    finally:
        parts.compiled_at_start.set()
    parts.compile_state = "ready"
    sizes = ", ".join(f"{width}x{height}" for width, height in parts.compile_sizes)
    log.info("compiled for %s in %.0f s (%s mode)", sizes, time.perf_counter() - start, compiled.mode)


async def shutdown(parts: Parts) -> None:
    """Tell every client, end every stream, stop the engine: before the server closes the sockets. Idempotent."""
    if parts.stopping.is_set():
        return
    parts.stopping.set()
    await parts.registry.end_all("shutting_down", SHUTDOWN_MESSAGE)
    await asyncio.gather(
        *(s.end("shutting_down", SHUTDOWN_MESSAGE) for s in list(parts.sockets)), return_exceptions=True
    )
    # The engine finishes the frame it is on; joining it must not hold the event loop.
    await asyncio.to_thread(parts.engine.stop)


def health_report(parts: Parts) -> dict:
    model, registry, sockets, compiled = parts.model, parts.registry, parts.sockets, parts.compiled
    return {
        "status": "ok",
        "version": version("lcmlive"),  # as `lcmlive --version` says it: what a bug report names
        "model": model.preset.name,
        "model_description": model.preset.description,  # the page shows it (the offline toy says what it is)
        "controlnet": list(model.control_kinds),
        "styles": list(model.style_names),
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "streams": len(registry),
        "publishers": registry.publishers,
        "viewers": sum(len(stream.viewers) for stream in registry),
        "controllers": sum(1 for s in sockets if s.role == "control"),
        "sockets": len(sockets),
        # The same limit under both names: `max_sessions` as clients have read it, `max_streams` as the flag says.
        "max_sessions": parts.config.max_streams,
        "max_streams": parts.config.max_streams,
        # What a leak would show first: all return to zero when the last stream ends.
        "engine_clients": parts.engine.client_count,
        "peer_connections": len(parts.peers),
        # Never zero (the server's own, this request's): back to its idle value when sessions end.
        "tasks": len(asyncio.all_tasks()),
        # --compile: "compiling" until the sizes made at start are ready; then the sizes with graphs, and how many
        # compiles frames caused while serving (shapes not made at start).
        "compile": parts.compile_state,
        "compiled_sizes": [f"{width}x{height}" for width, height in compiled.sizes] if compiled else [],
        "compiles_while_serving": compiled.on_demand if compiled else 0,
    }
