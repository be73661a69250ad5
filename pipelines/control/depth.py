"""The depth kind: the camera's relative depth, estimated on the device by Depth Anything V2 Small."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from ..hub import fetch_weights
from .kind import ControlKind

DEPTH_REPO = "depth-anything/Depth-Anything-V2-Small-hf"
# The checkpoint's preprocessor_config.json normalises with ImageNet's mean and std (the DPT image processor's own
# defaults are 0.5/0.5, so they must not be taken from there).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14
# The short side the estimator sees. The checkpoint's processor uses 518, but the map only has to be as sharp as the
# ControlNet needs, and depth is smooth: 252 has 4x fewer tokens. Measured with the real architecture (random
# weights, one CPU thread): 455 ms at 252x252 against 1644 ms at 518x518.
INPUT_SHORT_SIDE = 252
TINY_DEPTH_SEED = 0


def tiny_depth_estimator(seed: int = TINY_DEPTH_SEED) -> DepthAnythingForDepthEstimation:
    """A random Depth Anything of Depth-Anything-V2-Small's layout, shrunk to ~120k parameters, built offline."""
    # 0.15 rather than the default 0.02: with 0.02 the random stack's output is ~1e-8 across the frame, a flat map
    # (and zero in float16).
    init = 0.15
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        # Smaller than the inputs, so the position embeddings are interpolated as the real model's (518) are.
        image_size=126,
        patch_size=PATCH,
        # Taken by its __post_init__ from the extra keywords, which the config's dataclass type does not declare.
        out_indices=[1, 2, 3, 4],  # pyright: ignore[reportCallIssue]
        reshape_hidden_states=False,
        initializer_range=init,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=8,
        head_hidden_size=8,
        initializer_range=init,
        # The real head ends in a ReLU; a random one zeroes most pixels for some seeds. The sigmoid keeps every
        # pixel alive, so the stand-in's map always follows the frame.
        depth_estimation_type="metric",
        max_depth=1,
    )
    torch.manual_seed(seed)
    return DepthAnythingForDepthEstimation(config)


def input_size(height: int, width: int) -> tuple[int, int]:
    """The estimator's input size for a frame: the short side at INPUT_SHORT_SIDE, the aspect kept, multiples of 14."""
    scale = INPUT_SHORT_SIDE / min(height, width)
    return _multiple_of_patch(height * scale), _multiple_of_patch(width * scale)


def _multiple_of_patch(side: float) -> int:
    return max(PATCH, round(side / PATCH) * PATCH)


class DepthPreprocessor:
    """Depth on the device: resize, normalise, estimate, resize back, stretch to 0..255 — one copy to the host."""

    def __init__(self, estimator: DepthAnythingForDepthEstimation) -> None:
        self.estimator = estimator
        self.modules: list[torch.nn.Module] = [estimator]

    def __call__(self, frame: np.ndarray, params: Any = None) -> np.ndarray:  # depth has no params
        height, width = frame.shape[:2]
        # Read at call time: the components move their modules (this estimator among them) after loading.
        device, dtype = self.estimator.device, self.estimator.dtype
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(frame)).to(device)
            pixels = pixels.permute(2, 0, 1)[None].float()
            # Bicubic with antialiasing, as the checkpoint's processor (PIL bicubic) resizes; in float32, which
            # every backend supports, then cast.
            pixels = F.interpolate(pixels, input_size(height, width), mode="bicubic", antialias=True)
            pixels = pixels.clamp(0, 255).to(dtype) / 255
            mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
            depth = self.estimator(pixel_values=(pixels - mean) / std).predicted_depth
            # Back to the frame's size as post_process_depth_estimation does (bicubic), in float32 so the min-max
            # below does not lose float16's few levels.
            depth = F.interpolate(depth[:, None].float(), (height, width), mode="bicubic", align_corners=False)[0, 0]
            # Relative inverse depth, so near is bright, as the depth ControlNets were trained on. Stretched per
            # frame; a flat map (span 0) gives zeros rather than NaN.
            low, high = depth.min(), depth.max()
            grey = ((depth - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8)
            # One channel crosses to the host, a third of the bytes; the three equal channels are made there.
            grey = grey.cpu().numpy()
        return np.repeat(grey[:, :, None], 3, axis=2)


def load_depth_preprocessor(builtin: bool, device: torch.device, dtype: torch.dtype) -> DepthPreprocessor:
    """The tiny random estimator for built-in models (offline), else Depth Anything V2 Small from the cache or hub."""
    if builtin:
        estimator = tiny_depth_estimator()
    else:
        estimator = fetch_weights(
            "depth estimator",
            [DEPTH_REPO],
            lambda local: DepthAnythingForDepthEstimation.from_pretrained(DEPTH_REPO, dtype=dtype, **local),
        )
    # transformers wraps `to` in functools.wraps, whose type leaves `self` unbound.
    estimator.to(device=device, dtype=dtype).eval().requires_grad_(False)  # pyright: ignore[reportCallIssue]
    return DepthPreprocessor(estimator)


KIND = ControlKind(
    name="depth",
    reads="the camera's depth (near is bright)",
    weights={"sd15": "lllyasviel/control_v11f1p_sd15_depth", "sdxl": "diffusers/controlnet-depth-sdxl-1.0-small"},
    load_preprocessor=load_depth_preprocessor,
    params=None,
    stand_in_seed=1,
)
