"""Replica routing without Ray: which stream a request names, the placement rule, the merged views, and the
install hint of `--replicas` without the ray extra."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.cluster.routing import PENDING_SECONDS, UNREPORTED_SECONDS, Placement, Target, request_target
from server.cluster.views import merged_exposition

from conftest import ROOT


def http(method: str, path: str, query: bytes = b"") -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": query}


def socket(query: bytes) -> dict:
    return {"type": "websocket", "path": "/ws", "query_string": query}


def test_the_stream_a_request_names():
    assert request_target(socket(b"stream=stage")) == Target("stage", opens=True)
    assert request_target(socket(b"")) == Target(None, opens=True)  # the replica generates the name
    assert request_target(socket(b"stream=stage&role=control")) == Target("stage")
    assert request_target(http("POST", "/whip/stage")) == Target("stage", opens=True)
    assert request_target(http("OPTIONS", "/whip/stage")) == Target("stage")
    assert request_target(http("DELETE", "/whip/stage/abc")) == Target("stage")
    assert request_target(http("POST", "/whep/stage")) == Target("stage")
    assert request_target(http("DELETE", "/whep/stage/xyz")) == Target("stage")
    assert request_target(http("PATCH", "/streams/stage")) == Target("stage")
    assert request_target(http("POST", "/scenes/calm/recall", b"stream=stage")) == Target("stage")
    assert request_target(http("PUT", "/scenes/calm", b"stream=stage")) == Target("stage")
    assert request_target(http("GET", "/scenes")) == Target()
    for anywhere in ("/", "/health", "/streams", "/metrics", "/view/stage", "/client/app.js", "/params/schema"):
        assert request_target(http("GET", anywhere)) == Target(), anywhere


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_new_stream_goes_to_the_replica_with_the_fewest_and_counts_before_it_is_reported():
    clock = Clock()
    placement = Placement(clock)
    reported = {"a": ["one", "two"], "b": ["three"], "c": []}
    assert placement.choose(Target("x", opens=True), reported, "r1") == [["c"]]
    # Not reported yet, but placed: the next new stream goes elsewhere, and requests for x follow it.
    assert placement.choose(Target(None, opens=True), reported, "r2") == [["b"]]
    assert placement.choose(Target("x"), reported, "r3") == [["c"]]
    # Reported: counted once (c has x; b has three and the unnamed one; a has two).
    reported["c"] = ["x"]
    assert placement.choose(Target("y", opens=True), reported, "r4") == [["c"]]
    # A placement that no report ever shows (its offer never came) stops counting.
    clock.now += PENDING_SECONDS
    assert placement.choose(Target("z", opens=True), {"a": [], "b": []}, "r5") == [["a"]]


def test_a_named_stream_counts_until_a_report_shows_it_however_late():
    clock = Clock()
    placement = Placement(clock)
    reported = {"a": [], "b": []}
    assert placement.choose(Target("left", opens=True), reported, "r1") == [["a"]]
    clock.now += PENDING_SECONDS + 1  # reports lag behind (a loaded controller): left still counts on a
    assert placement.choose(Target("right", opens=True), reported, "r2") == [["b"]]
    # Reported: from then on a's count is its report's, so once left ends it no longer counts.
    assert placement.choose(Target("x", opens=True), {"a": ["left"], "b": ["right"]}, "r3") == [["a"]]
    assert placement.choose(Target("y", opens=True), {"a": [], "b": []}, "r4") == [["b"]]  # a still has x
    assert placement.holder("x", {"a": [], "b": []}) == "a"
    clock.now += UNREPORTED_SECONDS + 1  # x never showed up: forgotten
    assert placement.holder("x", {"a": [], "b": []}) is None


def test_a_stale_report_of_an_ended_stream_does_not_send_two_new_streams_to_one_replica():
    placement = Placement(Clock())
    reported = {"a": [], "b": ["ended"]}  # b's report still shows a stream that has ended
    assert placement.choose(Target("left", opens=True), reported, "r1") == [["a"]]
    # a: left pending (1), b: "ended" (1): a tie, which goes to the replica placed on less.
    assert placement.choose(Target("right", opens=True), reported, "r2") == [["b"]]


def test_a_request_asked_again_keeps_its_replica_and_counts_once():
    placement = Placement(Clock())
    reported = {"a": [], "b": []}
    # Serve asks again when the chosen replica did not tell its queue length in time.
    assert placement.choose(Target(None, opens=True), reported, "r1") == [["a"]]
    assert placement.choose(Target(None, opens=True), reported, "r1") == [["a"]]
    assert placement.choose(Target(None, opens=True), reported, "r2") == [["b"]]
    # Its replica died meanwhile: placed again among the living.
    assert placement.choose(Target(None, opens=True), {"b": []}, "r1") == [["b"]]


def test_a_stream_that_runs_keeps_its_replica():
    placement = Placement(Clock())
    reported = {"a": ["stage"], "b": []}
    assert placement.choose(Target("stage"), reported, "r1") == [["a"]]
    # A second publisher under a taken name goes to its holder, which refuses it (stream_taken).
    assert placement.choose(Target("stage", opens=True), reported, "r2") == [["a"]]
    # Unknown names and requests for no stream go anywhere.
    assert placement.choose(Target("nobody"), reported, "r3") == [["a", "b"]]
    assert placement.choose(Target(), reported, "r4") == [["a", "b"]]
    # A dead replica's streams go with it.
    assert placement.choose(Target("stage"), {"b": []}, "r5") == [["b"]]


def test_metrics_of_all_replicas_in_one_exposition_with_a_replica_label():
    text = (
        "# HELP lcmlive_streams Streams publishing\n# TYPE lcmlive_streams gauge\nlcmlive_streams 1.0\n"
        "# HELP lcmlive_frames Frames\n# TYPE lcmlive_frames counter\n"
        'lcmlive_frames_total{stage="out",stream="s"} 5.0\n'
    )
    reports = [{"health": {"id": replica}, "metrics": text} for replica in ("r1", "r2")]
    merged = merged_exposition(reports).decode()
    assert merged.count("# TYPE lcmlive_streams gauge") == 1
    assert 'lcmlive_frames_total{replica="r2",stage="out",stream="s"} 5.0' in merged
    samples = [s for family in text_string_to_metric_families(merged) for s in family.samples]
    assert sorted(s.labels["replica"] for s in samples) == ["r1", "r1", "r2", "r2"]


@pytest.mark.slow
def test_replicas_without_ray_say_how_to_get_it():
    hide_ray = "import sys; sys.modules['ray'] = None"  # find_spec then says: not installed
    command = f"{hide_ray}; from server.cli import main; sys.exit(main(['serve', '--replicas', '2']))"
    result = subprocess.run([sys.executable, "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'lcmlive[ray]'" in result.stderr
