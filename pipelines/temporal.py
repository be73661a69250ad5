"""Temporal smoothing for one stream: the camera's motion (DIS optical flow on small grey pictures), noise that moves
with the picture instead of staying on the screen, and the last output's latents carried along the motion into
this frame; a scene cut starts it all over.

The host side (`MotionTracker`) runs in `StreamPipeline.prepare`, the device side (`LatentHistory`) in
`render_batch`, which reaches it through the frame (`SmoothedFrame`), in frame order: a stream's frames never run
out of order on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# The flow runs on grey pictures this many times the latent size (for a 256-pixel frame 128 pixels: DIS's ultrafast
# preset takes about a millisecond there), and is averaged down to the latents.
FLOW_SCALE = 4
# A frame that differs from the last one by more than this on average (0-255), after following the motion, is a new
# scene: nothing of the last one is carried over.
CUT_LEVEL = 24.0
# Where a position differs by more than this after following the motion (something appeared, or the flow is
# wrong), nothing is carried over there; below it, less the larger the difference.
MISMATCH_LEVEL = 48.0


@dataclass(frozen=True)
class Smoothing:
    """What one `temporal_smoothing` value turns on."""

    moving_noise: bool  # the seed's noise follows the picture instead of the screen
    feedback: float  # share of the last output's latents, moved along the motion, in this frame's input latents
    output_blend: float  # their share in this frame's output latents

    @classmethod
    def at(cls, level: float) -> Smoothing:
        return cls(moving_noise=level > 0, feedback=FEEDBACK_AT_FULL * level, output_blend=OUTPUT_BLEND_AT_FULL * level)


# Input feedback is off behind the knob (bench --temporal still measures it): on the toy at 0.2 and 0.4 it lowered
# the warp error least of the techniques and pushed tracking to 8-12 px, as each frame re-styled the last one's style.
FEEDBACK_AT_FULL = 0.0
# At 0.6 alone: warp error -48%, still-camera flicker -55%; at the default level 0.5 the blend is 0.3.
OUTPUT_BLEND_AT_FULL = 0.6


@dataclass(frozen=True)
class SmoothedFrame:
    """One frame's share of its stream's smoothing: what its level turns on, and the stream's history on the
    device, which the frame reads and advances."""

    smoothing: Smoothing
    history: LatentHistory


class MotionTracker:
    """Host side, per stream: this frame's motion from the last one at latent resolution."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self._flow = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.cuts = 0  # frames taken for a new scene (the first frame is not one)

    def reset(self) -> None:
        self._previous = None

    def step(self, frame: np.ndarray, latent_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """ "flow" (2 x h x w: where each latent position's content was in the last frame, relative, in latent
        pixels) and "confidence" (1 x h x w, 0-1); nothing on the first frame, at a new size or after a cut."""
        height, width = latent_size
        small = cv2.resize(frame, (width * FLOW_SCALE, height * FLOW_SCALE), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            return {}
        # grey(p) ~ previous(p + flow(p)). None: OpenCV allocates the output (its stubs ask for an array).
        flow = self._flow.calc(grey, previous, None)  # pyright: ignore[reportArgumentType, reportCallIssue]
        rows, cols = np.indices(grey.shape, dtype=np.float32)
        followed = cv2.remap(
            previous, cols + flow[..., 0], rows + flow[..., 1], cv2.INTER_LINEAR, None, cv2.BORDER_REPLICATE
        )
        mismatch = cv2.absdiff(grey, followed).astype(np.float32)
        if float(mismatch.mean()) > CUT_LEVEL:
            self.cuts += 1
            return {}
        confidence = np.clip(1.0 - mismatch / MISMATCH_LEVEL, 0.0, 1.0)
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_AREA) / FLOW_SCALE
        confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_AREA)
        return {
            "flow": torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))),
            "confidence": torch.from_numpy(np.ascontiguousarray(confidence[None])),
        }


class LatentHistory:
    """Device side, per stream: where each latent position's content was when the noise was drawn, and the last
    output latents."""

    def __init__(self) -> None:
        # 1 x 2 x h x w: how far each position's content has come since the noise was drawn, in latent pixels.
        self.travelled: torch.Tensor | None = None
        self.moved = False  # whether anything has travelled since the last start
        self.latents: torch.Tensor | None = None  # the last frame's output latents
        self.flow: torch.Tensor | None = None  # this frame's motion (1 x 2 x h x w), None after a reset
        self.confidence: torch.Tensor | None = None

    def advance(self, motion: dict[str, torch.Tensor], latents: torch.Tensor) -> None:
        """Follow this frame's motion (the frame's tensors on the device); without one (first frame, cut, new size)
        start over where the noise was drawn, with nothing to carry."""
        flow = motion.get("flow")
        height, width = latents.shape[-2:]
        if flow is None or self.travelled is None or self.travelled.shape[-2:] != (height, width):
            self.travelled = torch.zeros(1, 2, height, width, device=latents.device)
            self.latents, self.flow, self.confidence, self.moved = None, None, None, False
            return
        self.flow = flow.unsqueeze(0).to(torch.float32)
        self.confidence = motion["confidence"].unsqueeze(0).to(torch.float32)
        # What is at p now was at p + flow(p) in the last frame, and had come travelled(p + flow(p)) before that.
        # Content that enters at an edge takes its neighbour's journey: it reads noise from beyond the edge.
        self.travelled = self.flow + follow(self.travelled, self.flow)
        self.moved = True
        if self.latents is not None and self.latents.shape[-2:] != (height, width):
            self.latents = None

    def carried(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last output latents moved along this frame's motion and the motion's confidence, or None when there
        is nothing to carry."""
        if self.latents is None or self.flow is None or self.confidence is None:
            return None
        return follow(self.latents.float(), self.flow).to(self.latents.dtype), self.confidence

    def moving(self, noise: torch.Tensor) -> torch.Tensor:
        """`noise` (1 x c x h x w, drawn on the screen's grid) read where each position's content was when it was
        drawn: it moves with the picture. The grid wraps around, and bilinear reads are rescaled to unit variance."""
        if not self.moved:  # read in place: exactly the drawn noise, no interpolation rounding
            return noise
        assert self.travelled is not None
        height, width = noise.shape[-2:]
        origin = _pixel_grid(height, width, noise.device) + self.travelled.permute(0, 2, 3, 1)
        x, y = origin[..., 0] % width, origin[..., 1] % height
        fx, fy = x - x.floor(), y - y.floor()
        # A blend of four independent draws with weights w has variance sum(w^2): divide it back out.
        spread = (((1 - fx) ** 2 + fx**2) * ((1 - fy) ** 2 + fy**2)).sqrt().unsqueeze(1)
        wrapped = F.pad(noise.float(), (0, 1, 0, 1), mode="circular")
        grid = torch.stack([(x + 0.5) / (width + 1) * 2 - 1, (y + 0.5) / (height + 1) * 2 - 1], dim=-1)
        read = F.grid_sample(wrapped, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (read / spread).to(noise.dtype)


def carry_into_inputs(
    frames: Sequence[SmoothedFrame | None],
    on_device: Sequence[dict[str, torch.Tensor]],
    noise: list,
    clean: torch.Tensor,
) -> tuple[list, torch.Tensor]:
    """For each frame with smoothing on: follow its motion, move its noise with the picture, and feed its last
    output back into its clean input latents. Frames without smoothing (None) pass unchanged."""
    noise, parts = list(noise), list(clean.split(1))
    for index, (frame, tensors) in enumerate(zip(frames, on_device, strict=True)):
        if frame is None:
            continue
        smoothing, history = frame.smoothing, frame.history
        history.advance(tensors, parts[index])
        if smoothing.moving_noise:
            noise[index] = replace(
                noise[index],
                first=_moved(history, noise[index].first),
                start_term=_moved(history, noise[index].start_term),
                step_terms=tuple(_moved(history, term) for term in noise[index].step_terms),
            )
        carried = history.carried() if smoothing.feedback > 0 else None
        if carried is not None:
            latents, confidence = carried
            parts[index] = _blend(parts[index], latents, smoothing.feedback * confidence)
    return noise, torch.cat(parts)


def carry_into_outputs(frames: Sequence[SmoothedFrame | None], denoised: torch.Tensor) -> torch.Tensor:
    """For each frame with smoothing on: blend in its last output along the motion, and keep the result for the
    next frame (an average along the motion, fading by the blend each frame)."""
    parts = list(denoised.split(1))
    for index, frame in enumerate(frames):
        if frame is None:
            continue
        smoothing, history = frame.smoothing, frame.history
        carried = history.carried() if smoothing.output_blend > 0 else None
        if carried is not None:
            latents, confidence = carried
            parts[index] = _blend(parts[index], latents, smoothing.output_blend * confidence)
        history.latents = parts[index].clone()
    return torch.cat(parts)


def _blend(current: torch.Tensor, carried: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.to(current.dtype)
    return (1 - weight) * current + weight * carried


def _moved(history: LatentHistory, noise: torch.Tensor | None) -> torch.Tensor | None:
    return None if noise is None else history.moving(noise)


def follow(tensor: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`tensor` (1 x c x h x w) read at p + flow(p) for every p: last frame's content where it is now."""
    height, width = tensor.shape[-2:]
    base = _pixel_grid(height, width, tensor.device)
    position = base + flow.permute(0, 2, 3, 1)
    grid = torch.stack([(position[..., 0] + 0.5) / width * 2 - 1, (position[..., 1] + 0.5) / height * 2 - 1], dim=-1)
    return F.grid_sample(tensor, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _pixel_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """1 x h x w x 2: each position's own (x, y)."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([cols, rows], dim=-1).unsqueeze(0)
