"""One frame's trip to the device: the plan of its parameters, and the request that carries its prepared inputs.

Made by the stream's pipeline (stream.py) on the host, read by the device side (batch.py) and the executor: the
lower part of the pipeline, which never reaches back into the stream's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import noise
from .components import ModelComponents
from .conditioning import PromptEmbeds
from .noise import SeededNoise
from .params import StreamParams
from .schedule import Schedule
from .temporal import SmoothedFrame
from .transition import PromptTransition

# txt2img: the noise glides from one seed to the next over this many frames, so the pictures morph, not flicker.
TXT2IMG_MORPH_FRAMES = 24


@dataclass
class FramePlan:
    """What one set of parameters needs per frame with one model; immutable apart from the per-size caches it
    fills lazily."""

    components: ModelComponents
    params: StreamParams
    schedule: Schedule
    prompt: PromptTransition  # the positive conditioning, possibly on its way from the last prompt
    negative: PromptEmbeds | None  # under classifier-free guidance
    classifier_free: bool
    timestep_cond: torch.Tensor | None
    # The ControlNet kinds that run, with their scales, in load order (MultiControlNet's); a kind at 0 is left out,
    # so it costs no call at all.
    control_scales: dict[str, float]
    control_view: str | None  # the kind whose control image the page's second video shows (None: no image)
    style: tuple[str, float] | None  # the style LoRA and its scale; None: the model alone (also at scale 0)
    # On the device in the model's dtype, so that a batch stacks them without a copy from the host per frame.
    guidance_tensor: torch.Tensor
    control_scale_tensors: dict[str, torch.Tensor]
    noise: dict[tuple[int, int], SeededNoise] = field(default_factory=dict)
    time_ids: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)  # (width, height, batch)
    draws: dict[tuple[int, tuple[int, int]], list[torch.Tensor]] = field(default_factory=dict)  # txt2img, host

    @property
    def txt2img(self) -> bool:
        return self.params.mode == "txt2img"

    def preprocessed_kinds(self, shown: bool) -> tuple[str, ...]:
        """The kinds whose control image a frame needs: those that run, and the one on view if it is `shown`."""
        on_view = [self.control_view] if shown and self.control_view else []
        return tuple(dict.fromkeys([*self.control_scales, *on_view]))

    @property
    def batch(self) -> int:
        return 2 if self.classifier_free else 1

    def img2img_noise(self, image_size: tuple[int, int]) -> SeededNoise:
        """img2img: draw the seed's noise for this latent size once; later frames at the same size reuse it."""
        seeded = self.noise.get(image_size)
        if seeded is None:
            device = self.components.device
            seeded = self.scaled([d.to(device) for d in self.seed_draws(image_size, self.params.seed)])
            self.noise[image_size] = seeded
        return seeded

    def txt2img_draws(self, image_size: tuple[int, int], tick: int) -> list[torch.Tensor]:
        """txt2img: the draws of the stream's frame number `tick`, gliding (slerp) from seed + k to seed + k + 1 over
        the morph frames.

        Frame 0 uses the seed's own draws, so it equals diffusers' text-to-image output for that seed. The draws
        are cached per seed and blended on the host: no device synchronisation per frame.
        """
        segment, offset = divmod(tick, TXT2IMG_MORPH_FRAMES)
        seeds = (self.params.seed + segment, self.params.seed + segment + 1)
        for stale in [key for key in self.draws if key[0] not in seeds or key[1] != image_size]:
            del self.draws[stale]
        start = self.seed_draws(image_size, seeds[0])
        if offset == 0:
            return start
        end = self.seed_draws(image_size, seeds[1])
        t = offset / TXT2IMG_MORPH_FRAMES
        return [noise.slerp(a, b, t) for a, b in zip(start, end, strict=True)]

    def seed_draws(self, image_size: tuple[int, int], seed: int) -> list[torch.Tensor]:
        """The seed's draws on the host, in diffusers' order (cached for txt2img, which reuses them)."""
        key = (seed, image_size)
        draws = self.draws.get(key)
        if draws is None:
            draws = noise.draw(self.components, self.schedule, self.txt2img, image_size, seed)
            if self.txt2img:
                self.draws[key] = draws
        return draws

    def scaled(self, draws: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> SeededNoise:
        """Draws (on the device) scaled by this plan's schedule."""
        return noise.scaled(self.components, self.schedule, self.txt2img, draws)


@dataclass(frozen=True)
class FrameRequest:
    """One frame ready for the device, made on the host by `StreamPipeline.prepare` before any device work.

    `host_tensors` are what the device side reads: "pixels" (the camera frame, uint8 H x W x 3), "control_{kind}"
    (each running ControlNet's control image, uint8 H x W x 3), "noise" (txt2img: this frame's draws, stacked),
    "flow" and "confidence" (temporal smoothing: the camera's motion). On CUDA the double-buffered executor uploads
    them from pinned memory while the previous frame computes: a copy from pageable memory would wait for the
    device, and the next frame could not be launched before the last one finished.
    """

    plan: FramePlan
    width: int
    height: int
    host_tensors: dict[str, torch.Tensor]
    control_image: np.ndarray | None  # the control image on view (FramePlan.control_view), for display
    output_size: tuple[int, int] | None = None  # (width, height) its picture leaves at; None: the processing size
    prompt_progress: float = 1.0  # how far through the prompt transition this frame is (read off the clock)
    temporal: SmoothedFrame | None = None  # temporal smoothing, when on (img2img): its stream's history
