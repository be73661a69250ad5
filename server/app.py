"""The web app on one port: the client page, /health, /params/schema and the /ws signaling socket."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from pipelines import ModelComponents, PromptCache, param_specs, params_json_schema

from .engine import Engine
from .protocol import error_message
from .session import Session
from .session_params import DEFAULT_MAX_RESOLUTION, DEFAULT_TARGET_FPS, session_specs

log = logging.getLogger(__name__)

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"


@dataclass(frozen=True)
class ServerConfig:
    token: str | None = None
    max_sessions: int = 4
    target_fps: float | None = None  # the viewers' starting target; None: by device


def create_app(model: ModelComponents, config: ServerConfig) -> Starlette:
    """The ASGI app serving one loaded model to up to `config.max_sessions` viewers."""
    engine = Engine(model.device)
    prompt_cache = PromptCache()
    sessions: set[Session] = set()
    device = model.device.type
    viewer_specs = session_specs(
        DEFAULT_MAX_RESOLUTION.get(device, 512), config.target_fps or DEFAULT_TARGET_FPS.get(device, 30.0)
    )
    model_specs = param_specs(model.preset, controlnet=model.controlnet is not None)
    schema = params_json_schema({**model_specs, **viewer_specs})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        engine.start()
        try:
            yield
        finally:
            await asyncio.gather(*(session.close() for session in list(sessions)), return_exceptions=True)
            engine.stop()

    async def index(request: Request) -> FileResponse:
        return FileResponse(CLIENT_DIR / "index.html")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "model": model.preset.name,
                "controlnet": "canny" if model.controlnet is not None else None,
                "device": str(model.device),
                "dtype": str(model.dtype).removeprefix("torch."),
                "sessions": len(sessions),
                "max_sessions": config.max_sessions,
                # What a leak would show first: both return to zero when the last viewer leaves.
                "engine_clients": engine.client_count,
                "peer_connections": sum(1 for s in sessions if s.pc is not None),
            }
        )

    async def params_schema(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def signaling(websocket: WebSocket) -> None:
        # Accept first, then refuse with a message: a rejected handshake looks like "server down" to a browser.
        await websocket.accept()
        if not _authorized(websocket, config.token):
            await _refuse(websocket, "unauthorized", "missing or wrong token: add ?token=... to the page URL")
            return
        if len(sessions) >= config.max_sessions:
            await _refuse(websocket, "server_full", f"the server is at its limit of {config.max_sessions} sessions")
            return
        session = Session(websocket, engine, model, prompt_cache, viewer_specs)
        sessions.add(session)
        try:
            await session.run()
        finally:
            sessions.discard(session)
            await session.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/params/schema", params_schema),
            WebSocketRoute("/ws", signaling),
            Mount("/client", StaticFiles(directory=CLIENT_DIR), name="client"),
        ],
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.sessions = sessions
    return app


def _authorized(websocket: WebSocket, token: str | None) -> bool:
    if not token:
        return True
    offered = websocket.query_params.get("token")
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        offered = offered or header[7:].strip()
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


async def _refuse(websocket: WebSocket, code: str, message: str) -> None:
    await websocket.send_text(json.dumps(error_message(code, message)))
    await websocket.close(code=1008 if code == "unauthorized" else 1013)
