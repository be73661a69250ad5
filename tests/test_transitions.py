"""Prompt transitions and the two-prompt blend, on a fake clock: the picture glides, the text encoder runs once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines import PromptCache, StreamPipeline, load_model, params_model_for
from pipelines.synthetic import moving_pattern

OLD, NEW, THIRD = "a watercolor painting", "neon lights at night", "fire"
FRAME = moving_pattern(128, 128, 3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def picture(pipe: StreamPipeline) -> np.ndarray:
    return pipe.render(FRAME, (128, 128))[0].float().cpu().numpy()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def pipeline_at(components, cache: PromptCache | None = None, **params) -> tuple[StreamPipeline, FakeClock]:
    """A pipeline that starts at `params` (no transition from the defaults), on a fake clock; without temporal
    smoothing, so that each frame shows its own point of the transition and nothing of the last frame."""
    clock = FakeClock()
    start = params_model_for(components)(steps=2, strength=0.5, temporal_smoothing=0.0, **params)
    return StreamPipeline(components, cache, start, clock=clock), clock


@pytest.fixture(scope="module")
def pictures(tiny):
    """The old and the new prompt's pictures of the same frame, each with no transition."""
    return {prompt: picture(pipeline_at(tiny, prompt=prompt)[0]) for prompt in (OLD, NEW)}


@pytest.mark.slow
def test_a_new_prompt_fades_in_over_transition_s(tiny, pictures):
    cache = PromptCache()
    pipe, clock = pipeline_at(tiny, cache, prompt=OLD, transition_s=2.0)
    assert np.array_equal(picture(pipe), pictures[OLD])
    pipe.update(prompt=NEW)
    to_old, to_new = [], []
    for _ in range(9):  # 0 ... 2 s in quarter seconds
        shown = picture(pipe)
        to_old.append(distance(shown, pictures[OLD]))
        to_new.append(distance(shown, pictures[NEW]))
        clock.now += 0.25
    assert to_old[0] < 1e-6 and to_new[-1] < 1e-6  # starts at the old picture, ends exactly at the new one
    # Moves away from the old and towards the new, never turning back by more than a fifth of the way: the toy's
    # picture for conditioning half-way between two prompts is not half-way between their pictures (measured: a
    # step back of 16% of the way, at the middle).
    wander = 0.2 * to_new[0]
    assert all(b >= a - wander for a, b in zip(to_old, to_old[1:], strict=False)), to_old
    assert all(b <= a + wander for a, b in zip(to_new, to_new[1:], strict=False)), to_new
    assert 0.25 * to_new[0] < to_new[4] < 0.75 * to_new[0]  # half-way there after half the time, roughly
    assert cache.encoder_calls == 2  # once per prompt, never per frame


def test_a_change_mid_transition_starts_from_where_the_picture_is(tiny, pictures):
    pipe, clock = pipeline_at(tiny, prompt=OLD, transition_s=2.0)
    pipe.update(prompt=NEW)
    clock.now += 1.0
    halfway = picture(pipe)
    pipe.update(prompt=THIRD)
    right_after = picture(pipe)
    assert distance(right_after, halfway) < 1e-6  # no jump back to the old prompt's picture
    assert distance(right_after, pictures[OLD]) > 0.25 * distance(pictures[NEW], pictures[OLD])
    clock.now += 2.0
    assert distance(picture(pipe), picture(pipeline_at(tiny, prompt=THIRD)[0])) < 1e-6


def test_other_changes_leave_a_running_transition_alone(tiny):
    pipe, clock = pipeline_at(tiny, prompt=OLD, transition_s=2.0)
    pipe.update(prompt=NEW)
    clock.now += 1.0
    pipe.update(seed=3)  # not the prompt: the transition goes on, with the new seed's noise
    reference, reference_clock = pipeline_at(tiny, prompt=OLD, transition_s=2.0)
    reference.update(prompt=NEW)
    reference_clock.now += 1.0
    reference.update(seed=3)
    assert distance(picture(pipe), picture(reference)) < 1e-6
    assert pipe._plan.prompt.progress(clock.now) == 0.5


def test_without_transition_a_new_prompt_cuts(tiny, pictures):
    pipe, _ = pipeline_at(tiny, prompt=OLD)
    pipe.update(prompt=NEW)
    assert np.array_equal(picture(pipe), pictures[NEW])


def test_prompt_mix_blends_two_prompts(tiny, pictures):
    at = {mix: picture(pipeline_at(tiny, prompt=OLD, prompt_b=NEW, prompt_mix=mix)[0]) for mix in (0.0, 0.5, 1.0)}
    assert np.array_equal(at[0.0], pictures[OLD])
    assert distance(at[1.0], pictures[NEW]) < 1e-6
    between = distance(pictures[OLD], pictures[NEW])
    assert distance(at[0.5], pictures[OLD]) < between and distance(at[0.5], pictures[NEW]) < between


@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-lcm-lora"])
def test_transitions_work_with_pooled_embeddings_and_classifier_free_guidance(preset):
    components = load_model(preset, device="cpu")
    params: dict[str, Any] = {"guidance_scale": 1.5} if preset == "tiny-lcm-lora" else {}
    pipe, clock = pipeline_at(components, prompt=OLD, transition_s=1.0, **params)
    start = picture(pipe)
    pipe.update(prompt=NEW)
    clock.now += 0.5
    middle = picture(pipe)
    clock.now += 0.5
    end = picture(pipe)
    assert 0 < distance(middle, start) < distance(end, start) + 1e-4
