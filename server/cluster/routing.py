"""Which replica a request goes to: the stream it names, whether it opens that stream, and the placement rule.

Pure logic, no Ray: the Serve request router (router.py) feeds it each replica's reported stream names. A request
that names a stream some replica holds goes to that replica (a WHEP viewer, a PATCH, a DELETE, a control socket,
and also a second publisher under a taken name, which that replica refuses with `stream_taken`). A request that
opens a new stream goes to the replica with the fewest. Everything else (pages, the schema) goes anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

# Replicas report their streams every ROUTING_STATS_PERIOD_SECONDS (router.py); until a report shows a stream this
# router placed, the placement itself counts. One whose replica makes its name up counts for PENDING_SECONDS (no
# report can confirm it); a named one until a report shows its name, or UNREPORTED_SECONDS (its offer never came).
# 5 s was once the limit for both: on a loaded 2-core CI machine two streams opened one after the other then landed
# on one replica, the first one's report not yet through Serve's controller when the second was placed.
PENDING_SECONDS = 5.0
UNREPORTED_SECONDS = 60.0


@dataclass(frozen=True)
class Target:
    stream: str | None = None  # the stream the request names, if any
    opens: bool = False  # it publishes a stream (page socket, WHIP POST) rather than use one that runs


ANYWHERE = Target()


def request_target(scope: Mapping[str, Any]) -> Target:
    """The stream an ASGI request (as the Serve proxy hands it to the router) is about."""
    path = scope.get("path", "")
    if scope.get("type") == "websocket":
        if path != "/ws":
            return ANYWHERE
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query.get("stream", [None])[0] or None
        return Target(name, opens=query.get("role", ["publish"])[0] != "control")
    parts = path.strip("/").split("/")
    if parts[0] == "scenes" and len(parts) >= 2:  # a scene saved from, or recalled on, the stream in the query
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query.get("stream", [None])[0] or None
        return Target(name) if name else ANYWHERE
    if len(parts) < 2 or parts[0] not in ("whip", "whep", "streams"):
        return ANYWHERE
    opens = parts[0] == "whip" and len(parts) == 2 and scope.get("method") == "POST"
    return Target(parts[1], opens=opens)


class Placement:
    """Where each stream is: the replicas' reports, plus the streams this router placed that no report shows yet."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # request id: (replica, stream name or None if the replica makes one up, when)
        self._placed: dict[str, tuple[str, str | None, float]] = {}

    def holder(self, name: str, reported: Mapping[str, Collection[str]]) -> str | None:
        """The replica that holds `name`, among those reporting; None if none does."""
        for replica, names in reported.items():
            if name in names:
                return replica
        for replica, placed, _ in self._recent(reported):
            if placed == name:
                return replica
        return None

    def choose(self, target: Target, reported: Mapping[str, Collection[str]], request: str) -> list[list[str]]:
        """Replica ids to try, in ranks (the first rank preferred). `reported`: each live replica's stream names.

        A stream's request gets its one replica and no second choice: Serve falls back to the next rank when a
        replica is slow to tell its queue length (under load, past 0.1 s), and it must not open the stream
        elsewhere; it retries instead, and asks again under the same `request` id, which keeps its placement."""
        holder = self.holder(target.stream, reported) if target.stream else None
        if holder is not None:
            return [[holder]]
        if not target.opens or not reported:
            return [sorted(reported)]
        recent = self._recent(reported)
        if request in self._placed and self._placed[request][0] in reported:
            return [[self._placed[request][0]]]
        loads = {replica: len(names) for replica, names in reported.items()}
        placed = dict.fromkeys(reported, 0)
        for replica, name, _ in recent:
            placed[replica] += 1
            if name is None or name not in reported[replica]:
                loads[replica] += 1
        # Ties go to the replica this router placed fewer streams on lately, then to the first id: a report that
        # still shows a stream that has ended (reports lag by a period or more) must not send two new streams in a
        # row to one replica.
        chosen = min(reported, key=lambda replica: (loads[replica], placed[replica], replica))
        self._placed[request] = (chosen, target.stream, self._clock())
        return [[chosen]]

    def _recent(self, reported: Mapping[str, Collection[str]]) -> list[tuple[str, str | None, float]]:
        """Placements on replicas that still report and that no report has confirmed yet, within their time
        (forgetting the others: a confirmed stream counts through its replica's report from then on)."""
        now = self._clock()

        def pending(entry: tuple[str, str | None, float]) -> bool:
            replica, name, placed_at = entry
            if name is None:
                return now - placed_at < PENDING_SECONDS
            return now - placed_at < UNREPORTED_SECONDS and name not in reported.get(replica, ())

        self._placed = {key: entry for key, entry in self._placed.items() if pending(entry)}
        return [entry for entry in self._placed.values() if entry[0] in reported]
