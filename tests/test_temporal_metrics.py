"""The temporal-consistency metrics on cases whose answers are known."""

from __future__ import annotations

import numpy as np

from server.bench.temporal_metrics import (
    measured_shift,
    moving_clip,
    static_flicker,
    still_clip,
    tracking_error,
    warp_error,
)

SHIFT = (4, 2)
CLIP = moving_clip(256, 256, SHIFT, 20)


def test_the_clip_moves_by_the_known_shift():
    dx, dy = SHIFT
    assert np.array_equal(CLIP[1][dy:, dx:], CLIP[0][: 256 - dy, : 256 - dx])
    assert np.allclose(measured_shift(CLIP[0], CLIP[5]), (5 * dx, 5 * dy), atol=0.5)


def test_an_exact_shift_has_no_warp_error_and_tracks():
    assert warp_error(CLIP, SHIFT) < 1e-12
    assert tracking_error(CLIP, SHIFT) < 0.5


def test_a_frozen_picture_fails_the_tracking_guard_whatever_its_warp_error():
    frozen = [CLIP[0]] * len(CLIP)
    assert tracking_error(frozen, SHIFT) > 20  # 5 frames x (4, 2) px: about 22 px from where it should be
    assert static_flicker(frozen) == 0.0


def test_fresh_noise_on_every_frame_flickers_and_warps_badly():
    rng = np.random.default_rng(0)
    noisy = [np.clip(f + rng.normal(0, 20, f.shape), 0, 255).astype(np.uint8) for f in CLIP]
    assert warp_error(noisy, SHIFT) > 100 * max(warp_error(CLIP, SHIFT), 1e-6)
    still = still_clip(128, 128, 10, sigma=3.0)
    assert 1.5 < static_flicker(still) < 5  # sigma 3 per frame: |a - b| of two draws is about 3.4 on average
