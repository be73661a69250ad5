"""`lcmlive bench --styles`: the rates with no style, an adapter and a fused style, the switch cost, and the checks
that the fused picture is the adapter's and a style moves the picture."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from server.bench import styles
from server.cli import main

RATES = ("fps_none", "fps_unfused", "fps_fused", "alternating_fps")
COSTS = ("switch_ms", "fuse_ms", "unfuse_ms")


def test_styles_bench_reports_rates_switch_costs_and_checks():
    args = argparse.Namespace(
        model="tiny-random", device="cpu", size=64, steps=2, strength=0.5, frames=2, warmup=0, json=True
    )
    threads = torch.get_num_threads()
    report = styles.main(args)
    assert torch.get_num_threads() == threads  # one model thread while it measures, then the caller's again
    assert all(report[key] > 0 for key in RATES), {key: report[key] for key in RATES}
    assert all(report[key] >= 0 for key in COSTS), {key: report[key] for key in COSTS}
    assert report["styles"] >= 2
    assert report["lora_layers"] > 0
    assert report["frames_per_way"] >= 2
    # From the unrounded rates: equal to the ratio of the rounded ones to within their rounding.
    assert report["fused_gain"] == pytest.approx(report["fps_fused"] / report["fps_unfused"], abs=1e-3)
    # The pictures: fusing changes where the LoRA is added, not what comes out; a style is not the plain model.
    assert report["fused_matches_unfused_max_abs"] <= 1e-3
    assert report["style_vs_none_mean_abs"] > 1e-3
    assert report["unfuse_restores_max_abs"] <= 1e-3


@pytest.mark.slow
def test_styles_bench_through_the_command_defaults_to_256_and_2_steps_and_ends_with_json(capsys):
    command = ["bench", "--styles", "--model", "tiny-random", "--device", "cpu", "--frames", "1", "--warmup", "0"]
    assert main([*command, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert (report["bench"], report["size"], report["steps"]) == ("styles", 256, 2)
    assert all(report[key] > 0 for key in RATES)
    assert any(line.strip().startswith("fused") for line in lines[:-1])  # the table comes first
