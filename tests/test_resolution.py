"""The adaptive-resolution controller against a simulated model and a fake clock."""

from __future__ import annotations

import pytest

from pipelines.resolution import ResolutionController, size_ladder
from pipelines.stream import processing_size

TARGET_FPS = 10.0


class SimulatedStream:
    """A model whose frame time grows with the pixel count, paced at the target rate, on a fake clock."""

    def __init__(
        self,
        seconds_at_256: float = 0.05,
        target_fps: float = TARGET_FPS,
        max_side: int = 512,
        fixed_seconds: float = 0.0,
        camera: tuple[int, int] | None = None,
    ):
        self.now = 0.0
        self.seconds_at_256 = seconds_at_256
        self.fixed_seconds = fixed_seconds  # per-frame cost that does not shrink with the picture
        self.slowdown = 1.0
        self.target_fps = target_fps
        self.controller = ResolutionController(target_fps, max_side=max_side, floor=128, clock=lambda: self.now)
        self.camera = camera  # (width, height); None: square frames
        if camera is not None:
            self.controller.frame_shape(*camera)
        self.delivered: list[float] = []
        self.sides: list[tuple[float, int]] = []

    def frame_seconds(self, side: int) -> float:
        width, height = processing_size(*self.camera, side) if self.camera is not None else (side, side)
        return self.slowdown * (self.fixed_seconds + self.seconds_at_256 * width * height / 256**2)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            side = self.controller.side
            start = self.now
            took = self.frame_seconds(side)
            self.now += took
            self.controller.observe(took)
            self.delivered.append(self.now)
            self.sides.append((self.now, side))
            self.now = max(self.now, start + 1 / self.target_fps)  # the engine never runs ahead of the target

    def within_target(self, fps: float) -> bool:
        return abs(fps - self.target_fps) <= 0.1 * self.target_fps

    def fps_at(self, t: float) -> float:
        """Frames delivered in the second before `t`."""
        return sum(1 for d in self.delivered if t - 1.0 < d <= t)

    def switches_between(self, start: float, end: float) -> int:
        sides = [side for t, side in self.sides if start <= t < end]
        return sum(1 for a, b in zip(sides, sides[1:], strict=False) if a != b)


def within_target(fps: float) -> bool:
    return abs(fps - TARGET_FPS) <= 0.1 * TARGET_FPS


def test_ladder_is_multiples_of_64_from_the_cap_to_the_floor():
    assert size_ladder(512, 128) == [512, 448, 384, 320, 256, 192, 128]
    assert size_ladder(256, 256) == [256]
    with pytest.raises(ValueError):
        size_ladder(500, 128)


def test_finds_a_size_that_holds_the_target_from_a_cold_start():
    sim = SimulatedStream()
    sim.run(5.0)
    assert sim.controller.side == 320  # 78 ms at 320 fits a 100 ms budget; 384 (113 ms) does not
    assert within_target(sim.fps_at(5.0))


def test_recovers_the_target_within_3_s_after_the_model_becomes_2x_slower():
    sim = SimulatedStream()
    sim.run(30.0)
    assert within_target(sim.fps_at(30.0))
    sim.slowdown = 2.0
    slowed_at = sim.now
    sim.run(10.0)
    recovered = [t for t in (slowed_at + 0.5 * k for k in range(1, 21)) if within_target(sim.fps_at(t))]
    assert recovered and recovered[0] - slowed_at <= 3.0, sim.sides[-40:]
    assert all(within_target(sim.fps_at(t)) for t in (slowed_at + 4, slowed_at + 7, slowed_at + 10))
    assert sim.controller.side < 320


def test_switches_at_most_once_per_10_s_at_steady_load():
    sim = SimulatedStream()
    sim.run(10.0)  # settle first
    sim.run(120.0)
    for start in range(10, 130, 10):
        assert sim.switches_between(start, start + 10) <= 1


def test_steps_up_slowly_when_the_load_goes_away():
    sim = SimulatedStream()
    sim.slowdown = 2.0
    sim.run(20.0)
    low = sim.controller.side
    sim.slowdown = 0.5
    lightened_at = sim.now
    sim.run(5.0)
    assert sim.controller.side == low  # headroom must last 10 s before a step up
    sim.run(60.0)
    assert sim.controller.side > low
    assert sim.switches_between(lightened_at, sim.now) <= (sim.now - lightened_at) / 10 + 1


def test_never_leaves_the_ladder():
    sim = SimulatedStream()
    sim.slowdown = 10.0  # even the floor misses the budget
    sim.run(60.0)
    assert sim.controller.side == 128
    assert sim.controller.state == "at floor"
    sim.slowdown = 0.001
    sim.run(300.0)
    assert sim.controller.side == 512
    assert min(side for _, side in sim.sides) == 128 and max(side for _, side in sim.sides) == 512


def test_out_of_memory_steps_down_and_blocks_the_rung():
    sim = SimulatedStream(seconds_at_256=0.001)
    sim.run(2.0)
    assert sim.controller.side == 512
    sim.controller.out_of_memory()
    assert sim.controller.side == 448 and sim.controller.state == "out of memory"
    sim.run(30.0)
    assert sim.controller.side == 448  # plenty of headroom, but 512 did not fit: not retried for a while


def test_a_new_cap_keeps_the_nearest_rung():
    controller = ResolutionController(10.0, max_side=512, floor=128, clock=lambda: 0.0)
    controller.index = controller.ladder.index(320)
    controller.configure(target_fps=15.0, max_side=256, floor=128)
    assert controller.ladder == [256, 192, 128] and controller.side == 256


def test_learns_that_small_sizes_cost_more_than_their_pixels():
    """Real models have per-frame costs that do not shrink with the picture (the tiny CPU model: 88 ms at 128 px,
    199 ms at 256 px). After one switch the controller knows, and jumps straight to a rung that fits."""
    sim = SimulatedStream(seconds_at_256=0.12, fixed_seconds=0.08, target_fps=4.0)
    sim.run(20.0)
    assert sim.within_target(sim.fps_at(20.0))
    assert sim.controller.exponent < 1.8
    sim.slowdown = 2.0
    slowed_at = sim.now
    sim.run(20.0)
    recovered = [t for t in (slowed_at + 0.25 * k for k in range(1, 80)) if sim.within_target(sim.fps_at(t))]
    assert recovered and recovered[0] - slowed_at <= 3.0
    assert sim.switches_between(slowed_at, sim.now) == 1


def test_a_4_3_camera_held_at_the_floor_climbs_back_when_the_next_rung_fits():
    """A 640x480 camera runs 128x128 at 128 and 192x128 at 192: 1.5x the pixels, not the 2.25x of the sides
    squared. At 110 ms a frame at 128 and a 4 fps target, 192 takes 165 ms, 66% of the budget: room to climb."""
    sim = SimulatedStream(seconds_at_256=0.110 * 4, target_fps=4.0, max_side=256, camera=(640, 480))
    sim.controller.index = sim.controller.ladder.index(128)
    sim.run(30.0)
    assert sim.controller.side == 192, sim.sides[-1]
    assert sim.switches_between(0.0, sim.now) == 1
