"""The routes that speak for every replica: `/health`, `GET /streams` and `/metrics`, from the replicas' reports.

A report is `{"health": {"id", "node", "pid", ...the replica's own /health}, "streams": [summaries], "metrics":
Prometheus text}`. Each replica's metric samples get a `replica` label, merged into one exposition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import version
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Reports = Callable[[], Awaitable[list[dict[str, Any]]]]

# Counts that add up over replicas in the cluster's /health.
SUMMED = (
    "streams",
    "publishers",
    "viewers",
    "controllers",
    "sockets",
    "max_sessions",
    "max_streams",
    "peer_connections",
)


def cluster_routes(reports: Reports) -> list[Route]:
    async def health(request: Request) -> JSONResponse:
        replicas = [report["health"] for report in await reports()]
        totals = {key: sum(replica.get(key, 0) for replica in replicas) for key in SUMMED}
        return JSONResponse({"status": "ok", "version": version("lcmlive"), **totals, "replicas": replicas})

    async def streams(request: Request) -> JSONResponse:
        return JSONResponse({"streams": [stream for report in await reports() for stream in report["streams"]]})

    async def metrics(request: Request) -> Response:
        return Response(merged_exposition(await reports()), media_type=CONTENT_TYPE_LATEST)

    return [Route("/health", health), Route("/streams", streams), Route("/metrics", metrics)]


def merged_exposition(reports: Iterable[dict[str, Any]]) -> bytes:
    """One Prometheus text of every replica's metrics, each sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for report in reports:
        replica = report["health"]["id"]
        for family in text_string_to_metric_families(report["metrics"]):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "replica": replica}) for sample in family.samples
            )
    registry = CollectorRegistry()
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
