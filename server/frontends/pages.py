"""The browser pages: the studio page at `/`, `/view/{stream}` (picture only) and `/control/{stream}`.

The pages ship inside the package (`client/`, package data) and are found through importlib.resources, so an
installed wheel serves them as a source checkout does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..registry import StreamError, check_stream_name


def client_directory() -> Path:
    """The folder of the installed `client` package (a real folder: setuptools installs package data as files)."""
    return Path(str(resources.files("client")))


def page_routes() -> list[Route | Mount]:
    client = client_directory()

    def page(file_name: str, named: bool):
        async def serve(request: Request) -> Response:
            if named:
                try:
                    check_stream_name(request.path_params["stream"])
                except StreamError as error:
                    return Response(error.message, status_code=400, media_type="text/plain")
            return FileResponse(client / file_name)

        return serve

    return [
        Route("/", page("index.html", named=False)),
        Route("/view/{stream}", page("view.html", named=True)),
        Route("/control/{stream}", page("control.html", named=True)),
        Mount("/client", StaticFiles(directory=client), name="client"),
    ]
