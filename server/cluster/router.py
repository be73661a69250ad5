"""The Serve request router: each request goes to the replica that holds its stream, a new stream to the one with
the fewest.

It runs inside Serve's proxy. Serve's default router balances requests in flight, which says nothing about
streams: a WHIP POST returns at once while its stream runs for hours. Each replica reports its stream names as
routing stats (`Replica.record_routing_stats`, every ROUTING_STATS_PERIOD_SECONDS); the rules are in routing.py.
"""

from __future__ import annotations

import asyncio
import pickle
import time

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .routing import ANYWHERE, Placement, Target, request_target

ROUTING_STATS_PERIOD_SECONDS = 0.5
# A stream this router did not place (a page socket's generated name) is known once its replica reports it: a
# request for a name no replica reports waits up to this long for the next reports before it goes anywhere (and is
# answered 404 there).
UNKNOWN_STREAM_WAIT_SECONDS = 2.0


class StreamRouter(RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._placement = Placement()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        target = _target_of(pending_request)
        if pending_request is not None:
            # A rank of one replica that does not answer in time is retried, with Serve's backoff rather than a spin.
            pending_request.routing_context.should_backoff = True
        if target.stream and not target.opens:
            candidate_replicas = await self._wait_for_holder(target.stream, candidate_replicas)
        replicas = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        request = pending_request.metadata.internal_request_id if pending_request is not None else ""
        ranks = self._placement.choose(target, _reported(candidate_replicas), request)
        return [[replicas[replica_id] for replica_id in rank] for rank in ranks]

    async def _wait_for_holder(self, name: str, candidates: list[RunningReplica]) -> list[RunningReplica]:
        deadline = time.monotonic() + UNKNOWN_STREAM_WAIT_SECONDS
        while self._placement.holder(name, _reported(candidates)) is None and time.monotonic() < deadline:
            await asyncio.sleep(ROUTING_STATS_PERIOD_SECONDS / 4)
            candidates = list(self.curr_replicas.values()) or candidates
        return candidates


def _reported(replicas: list[RunningReplica]) -> dict[str, list[str]]:
    return {replica.replica_id.unique_id: replica.routing_stats.get("streams", []) for replica in replicas}


def _target_of(pending_request: PendingRequest | None) -> Target:
    if pending_request is None or not pending_request.metadata.is_http_request or not pending_request.args:
        return ANYWHERE
    # The proxy hands the replica a pickled StreamingHTTPRequest: the ASGI scope, without the body.
    return request_target(pickle.loads(pending_request.args[0]).asgi_scope)
