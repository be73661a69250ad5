"""Style LoRAs from a folder, loaded once as PEFT adapters on the shared UNet and switched per batch."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import warnings
from pathlib import Path

from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from safetensors.torch import load_file, save_file

from .components import ModelComponents
from .params import NO_STYLE

log = logging.getLogger(__name__)

# What diffusers' `lora_state_dict` reads: safetensors, else a pickled torch state dict (loaded weights-only).
LORA_SUFFIXES = (".safetensors", ".bin", ".pt")
UNET_PREFIX = "unet."


class StyleLibrary:
    """The styles of one model, each a LoRA adapter on its UNet; at most one is active at a time.

    Everything runs on the engine thread: `activate` changes the UNet that every stream shares, so it is called
    with each batch's style right before that batch.
    """

    def __init__(self, components: ModelComponents) -> None:
        """An empty library (no styles) for `components`; `load` fills one from a folder."""
        self._unet = components.unet
        self._loader = StableDiffusionXLLoraLoaderMixin if components.is_sdxl else StableDiffusionLoraLoaderMixin
        self._names: list[str] = []
        self._active: tuple[str, float] | None = None
        self._fused: tuple[str, float] | None = None
        self.directory: Path | None = None  # the folder `load` read: a recording names it for its render

    @classmethod
    def load(cls, components: ModelComponents, directory: str | Path) -> StyleLibrary:
        """Every LoRA file of `directory` (sorted by file name) as a style named after its stem; no style active.

        A missing folder, or a file that cannot be read, is not a LoRA or does not fit this UNet, is one warning
        and no style: a bad file never stops the server.
        """
        library = cls(components)
        library.directory = Path(directory).absolute()
        for path in _lora_files(Path(directory)):
            library._add(path)
        if library._names:
            # New adapter modules are created in training mode, and the last one loaded is left active.
            library._unet.eval()
            library._unet.set_adapters([])
        return library

    @property
    def names(self) -> tuple[str, ...]:
        """The styles, in load order, without the plain model's `none`."""
        return tuple(self._names)

    @property
    def active(self) -> tuple[str, float] | None:
        """The (style, scale) the next UNet call uses, or None for the plain UNet."""
        return self._active

    def activate(self, name: str, scale: float) -> None:
        """Make the next UNet calls use style `name` at `scale`; `none` or a scale of 0 is the plain UNet.

        Nothing happens when that is already the state, so it can be called before every batch.
        """
        target = self._target(name, scale)
        if target == self._active:
            return
        if self._fused is not None:
            raise RuntimeError(
                f"style {self._fused[0]!r} is fused into the shared UNet at scale {self._fused[1]}: "
                f"unfuse it before using {name!r} at {scale}"
            )
        # `set_adapters` walks every module of the UNet, and the walk grows with each style's adapter modules.
        # Measured on a busy 2-core CPU with four styles: 1.8 ms for tiny-random (32 LoRA layers), 14 ms for an
        # SD1.5-shaped UNet (128), 43 ms for an SDXL-shaped one (560). An empty list is the plain UNet: PEFT then
        # calls only the base layers, bit for bit the output before loading, and unlike `disable_lora` it needs
        # no second walk (`enable_lora`) on the way back to a style.
        if target is None:
            self._unet.set_adapters([])
        else:
            self._unet.set_adapters([target[0]], [target[1]])
        self._active = target

    def fuse(self, name: str, scale: float) -> None:
        """Merge style `name` at `scale` into the UNet's weights (no per-call LoRA branch), until `unfuse`.

        For benchmarks: the weights are shared, so while fused every stream gets this style and `activate`
        refuses any other.
        """
        if self._fused is not None:
            raise RuntimeError(f"style {self._fused[0]!r} is already fused: unfuse it first")
        if self._target(name, scale) is None:
            raise ValueError(f"nothing to fuse for style {name!r} at scale {scale}")
        self.activate(name, scale)
        # The merge uses the scale `activate` set; fuse_lora's own lora_scale would multiply it again.
        self._unet.fuse_lora(adapter_names=[name])
        self._fused = self._active

    def unfuse(self) -> None:
        """Subtract the fused style from the weights again; it stays active as an adapter.

        The weights equal those before `fuse` within float rounding, not bit for bit. No fused style: no-op.
        """
        if self._fused is None:
            return
        self._unet.unfuse_lora()
        self._fused = None

    def _target(self, name: str, scale: float) -> tuple[str, float] | None:
        if name != NO_STYLE and name not in self._names:
            known = ", ".join([NO_STYLE, *self._names])
            raise ValueError(f"unknown style {name!r}; known: {known}")
        if not math.isfinite(scale):
            raise ValueError(f"style scale must be a finite number, got {scale}")
        if name == NO_STYLE or scale == 0:
            return None
        return name, float(scale)

    def _add(self, path: Path) -> None:
        """Load one file as a style, or log why not."""
        # The SDXL loader maps kohya block numbers with the UNet's config, as its `load_lora_weights` does.
        extra = {"unet_config": self._unet.config} if self._loader is StableDiffusionXLLoraLoaderMixin else {}
        try:
            # Three items with return_lora_metadata=True; diffusers' annotation allows its two-item form too.
            state_dict, alphas, metadata = self._loader.lora_state_dict(  # pyright: ignore[reportAssignmentType]
                str(path), return_lora_metadata=True, **extra
            )
        except Exception as error:  # whatever the file holds, a broken one costs its style, not the server
            log.warning("LoRA %s skipped: cannot read it (%s)", path, _first_line(error))
            return
        if not state_dict or not all("lora" in key for key in state_dict):
            log.warning("LoRA %s skipped: not a LoRA file (its tensor names do not say 'lora')", path)
            return
        unet_state = {key: value for key, value in state_dict.items() if key.startswith(UNET_PREFIX)}
        if not unet_state:
            log.warning("LoRA %s skipped: it has no UNet weights", path)
            return
        name = self._free_name(path)
        left_out = sorted({key.split(".")[0] for key in state_dict.keys() - unet_state.keys()})
        if left_out:
            # Prompt embeddings are cached per prompt and shared by every stream, whatever its style.
            log.warning(
                "style %r: only its UNet LoRA is applied; its %s weights (%d tensors) are left out",
                name,
                ", ".join(left_out),
                len(state_dict) - len(unet_state),
            )
        try:
            with warnings.catch_warnings():
                # Several adapters on one model is the point here, not the mistake PEFT warns about.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self._loader.load_lora_into_unet(unet_state, alphas, self._unet, adapter_name=name, metadata=metadata)
        except Exception as error:  # diffusers removes the half-loaded adapter before it raises
            log.warning("LoRA %s skipped: it does not fit this model's UNet (%s)", path, _first_line(error))
            return
        self._names.append(name)
        log.info("style %r loaded from %s", name, path)

    def _free_name(self, path: Path) -> str:
        """The file's stem, made unique and kept off `none`, with a warning when it had to change."""
        stem = path.stem.replace(".", "_")  # adapter names are module keys, which cannot hold a dot
        name, number = stem, 2
        while name.lower() == NO_STYLE or name in self._names:
            name, number = f"{stem}-{number}", number + 1
        if name != path.stem:
            if stem.lower() == NO_STYLE:
                reason = f"{NO_STYLE!r} is the plain model"
            elif stem in self._names:
                reason = f"style {stem!r} came from another file"
            else:
                reason = "style names cannot hold a dot"
            log.warning("LoRA %s is style %r: %s", path, name, reason)
        return name


def make_random_lora(
    components: ModelComponents, path: str | Path, seed: int = 0, rank: int = 4, up_scale: float = 1.0
) -> Path:
    """Write a random LoRA that visibly changes the model's UNet to `path` (call it before styles are loaded).

    It targets the attention projections, in the diffusers format that `load_lora_weights` reads. `up_scale`
    multiplies its up-projections: a stronger style for models that shrug off PEFT's random draw.
    """
    from .tiny import save_tiny_lora

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a random LoRA is written as safetensors; {path} does not end in .safetensors")
    with tempfile.TemporaryDirectory(prefix="lcmlive-random-lora-") as folder:
        written = save_tiny_lora(folder, seed=seed, rank=rank, sdxl=components.is_sdxl, unet=components.unet)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written / "pytorch_lora_weights.safetensors", path)
    if up_scale != 1.0:
        weights = load_file(path)
        save_file({key: value * up_scale if ".lora.up." in key else value for key, value in weights.items()}, path)
    return path


def _lora_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        log.warning("LoRA folder %s does not exist: no styles", directory)
        return []
    files, ignored = [], []
    for entry in sorted(directory.iterdir()):
        (files if entry.is_file() and entry.suffix in LORA_SUFFIXES else ignored).append(entry)
    if ignored:
        names, suffixes = ", ".join(p.name for p in ignored), " ".join(LORA_SUFFIXES)
        log.info("LoRA folder %s: ignoring %s (not %s)", directory, names, suffixes)
    return files


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
