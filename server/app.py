"""The web app on one port: pages, /health, /params/schema, /metrics, the /ws socket, WHIP, WHEP, REST; and OSC.

It builds the parts (engine, registry of streams, peer connections) and hands each front end the registry; the
front ends never reach the engine or each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from pipelines import ModelComponents, PromptCache, params_json_schema, params_model_for
from pipelines.params import Params

from .access import AccessGate
from .config import ServerConfig
from .engine import Engine
from .frontends.osc import osc_socket, start_osc
from .frontends.pages import page_routes
from .frontends.rest import rest_routes
from .frontends.websocket import PageSocket, page_socket
from .frontends.whep import whep_routes
from .frontends.whip import whip_routes
from .media.peers import PeerConnections
from .metrics import Metrics
from .registry import StreamRegistry
from .scenes import SceneBook, Scenes
from .session_params import DEFAULT_MAX_RESOLUTION, DEFAULT_TARGET_FPS, session_params_model, settings_model

log = logging.getLogger(__name__)

# The pages and their scripts hold nothing secret; the token guards what they call.
OPEN_PATHS = ("/", "/view", "/control", "/client")
SHUTDOWN_MESSAGE = "the server is shutting down"


def create_app(
    model: ModelComponents,
    config: ServerConfig,
    overrides: Sequence[BaseRoute] = (),
    scene_book: Callable[[type[Params]], Scenes] | None = None,
) -> Starlette:
    """The ASGI app serving one loaded model to up to `config.max_sessions` streams.

    `overrides` come before the app's own routes (a Ray Serve replica's /health, /streams and /metrics of all
    replicas); `scene_book` makes the scenes from the settings model in place of the `--scenes` file's own book (a
    replica's view of the board's)."""
    engine = Engine(model.device, max_batch=config.max_batch)
    peers = PeerConnections()
    device = model.device.type
    session_model = session_params_model(
        DEFAULT_MAX_RESOLUTION.get(device, 512), config.target_fps or DEFAULT_TARGET_FPS.get(device, 30.0)
    )
    settings = settings_model(params_model_for(model), session_model)
    # A bad scene file is one clear ValueError, before serving.
    scenes = scene_book(settings) if scene_book is not None else SceneBook(settings, config.scenes_path)
    metrics = Metrics(model.device)
    osc_listener = osc_socket(config.osc_host, config.osc_port) if config.osc_port is not None else None
    registry = StreamRegistry(engine, model, PromptCache(), session_model, peers, config, metrics)
    metrics.read_streams(lambda: list(registry))
    sockets: set[PageSocket] = set()
    # What every front end validates against, as the pages build their controls from it.
    schema = params_json_schema(params_model_for(model), session_model)

    stopping = asyncio.Event()

    async def shutdown() -> None:
        """Tell every client, end every stream, stop the engine: before the server closes the sockets. Idempotent."""
        if stopping.is_set():
            return
        stopping.set()
        await registry.end_all("shutting_down", SHUTDOWN_MESSAGE)
        await asyncio.gather(*(s.end("shutting_down", SHUTDOWN_MESSAGE) for s in list(sockets)), return_exceptions=True)
        # The engine finishes the frame it is on; joining it must not hold the event loop.
        await asyncio.to_thread(engine.stop)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        engine.start()
        osc = None
        if osc_listener is not None:
            osc, _ = await start_osc(registry, scenes, settings, metrics, osc_listener, config.osc_allow)
        try:
            yield
        finally:
            if osc is not None:
                osc.close()
            await shutdown()

    def health_report() -> dict:
        return {
            "status": "ok",
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
            "max_sessions": config.max_sessions,
            # What a leak would show first: all return to zero when the last stream ends.
            "engine_clients": engine.client_count,
            "peer_connections": len(peers),
            # Never zero (the server's own, this request's): back to its idle value when sessions end.
            "tasks": len(asyncio.all_tasks()),
        }

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(health_report())

    async def params_schema(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def metrics_exposition(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def signaling(websocket: WebSocket) -> None:
        await page_socket(websocket, registry, sockets)

    app = Starlette(
        routes=[
            *overrides,
            *page_routes(),
            Route("/health", health),
            Route("/params/schema", params_schema),
            Route("/metrics", metrics_exposition),
            WebSocketRoute("/ws", signaling),
            *whip_routes(registry),
            *whep_routes(registry),
            *rest_routes(registry, scenes),
        ],
        middleware=[
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
        ],
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.registry = registry
    app.state.sockets = sockets
    app.state.shutdown = shutdown
    app.state.scenes = scenes
    app.state.metrics = metrics
    app.state.health_report = health_report
    app.state.osc_port = osc_listener.getsockname()[1] if osc_listener is not None else None
    return app
