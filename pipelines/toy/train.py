"""`python -m pipelines.toy.train`: trains the toy model from scratch on the CPU, seeded, and writes the weights that
the `tiny` preset loads (`pipelines/toy/weights/`).

Stage 1 teaches the VAE to reconstruct synthetic pictures. Stage 2 freezes it and teaches the UNet and the text
encoder together, as a text-conditioned denoiser: the img2img chain of the stream pipeline (the same schedule
code, strength and steps drawn at random, mostly 0.5 and 2) must end at the camera picture restyled by
the prompt's style words, as strongly as the guidance scale asks.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..presets import ScheduleKind
from ..schedule import Schedule, build_schedule, guidance_embedding
from .model import CHECKSUMS, GUIDANCE_EMBEDDING_DIM, WEIGHTS, fresh_parts, save_parts
from .pictures import OPPONENT, synthetic_picture
from .styles import STYLES, restyle, style_weight

# Scaled latents get this standard deviation (SD's convention is 1). Larger latents keep more of the picture under
# the noise that strength adds: at strength 0.5 (t=499, alpha 0.278) the picture is 22x the noise in power at 8,
# 88x at 16, against 0.28x at 1. At 4, even with NOISE_INVARIANCE, the seed's noise showed as blobs fixed to the
# screen and phase correlation between the outputs of a moving picture found no motion (0 px for 15); at 8 it found
# the input's, until the VAE kept both colour axes: then the noise leaked into colour as blobs fixed to the screen and
# the output stood still again (0.1 px for 15; 2-5 px with NOISE_INVARIANCE 10 or 20). At 16 it moves with the
# picture (15.6 px for 15, same VAE, same stage-2 budget).
LATENT_STD = 16.0
# Stage 2 runs every picture under two noise draws and counts the difference of the two results this much more than
# the error against the target. The stream pipeline draws its noise once per stream, so whatever of the noise leaks
# into the output stays fixed on the screen while the camera moves: without this term 400 steps left blobs that
# held phase correlation at 0 px on a moving picture; with it, the output moved as the input (400 steps, std 8).
NOISE_INVARIANCE = 4.0
PICTURE_SIZE = 192
VAE_LR = 2e-3
UNET_LR = 6e-4
# Colour errors (each channel's error less the mean of the three) count this much more than brightness errors.
# Without it, VAEs of two designs (AutoencoderKL, TAESD) trained 300-1500 steps gave back grey pictures: colour
# carries a fraction of the variance of brightness, so it was learnt last. At 16 every hue was learnt but detail
# came slowly (600 steps: 15.6 dB on the held-out photos, 16.7 on synthetic ones); at 4, 17.9 and 19.2.
CHROMA_WEIGHT = 4.0
# A linear read-out of the posterior mean must give the 8x8 block's mean luminance, red-green and yellow-blue, with
# this weight (the read-out is trained with the VAE and thrown away). It makes the encoder carry both colour axes from
# the start: 1000 steps without it kept red-green at 0.62 correlation (21.5 dB synthetic), with it 0.97 (26.7 dB).
COLOUR_PROBE_WEIGHT = 1.0
# The VAE stage runs its ops on two threads (152 ms a step against 264 ms on one); stage 2 keeps one and makes its
# batches on the other core.
VAE_THREADS = 2
FILLERS = (
    "a", "an", "the", "of", "in", "at", "with", "and", "style", "photo", "picture", "painting", "portrait", "me",
    "face", "person", "cat", "room", "city", "street", "lights", "colors", "thick", "brush", "strokes", "art",
    "scene", "window", "tree", "sky", "beautiful", "detailed",
)  # fmt: skip
# img2img settings the chain is trained on; (2, 0.5), the default, is drawn 65% of the time.
SETTINGS = [
    (steps, strength)
    for steps in (1, 2, 3, 4)
    for strength in (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
    if int(50 * strength) >= steps
]


@dataclass(frozen=True)
class Budget:
    """How much to train; the defaults are the shipped weights' (1674 s on 2 quiet cores)."""

    pictures: int = 2000
    # 16-channel VAE: 3000 steps reached 24.1 / 29.0 dB (photos / synthetic) but leant to its 8-pixel latent grid
    # (a moving picture followed to 1.36 px at worst, smoothing off; 2.15 px under bench --temporal); 5000 steps
    # 25.1 / 30.6 dB and 0.55 px (0.66 after the longer stage 2 below).
    vae_steps: int = 5000
    vae_batch: int = 16
    # 64-pixel crops: a VAE step on 16 of them took 253 ms of one core, on 96-pixel ones 532 ms.
    vae_crop: int = 64
    # 1800 steps kept the camera picture but applied the styles that remake it weakly (moved from "a photo": ink 10,
    # negative 37, pencil 38 of 255); 2700 steps: 41, 57, 64, for 319 s more (845 s against 526).
    unet_steps: int = 2700
    unet_batch: int = 16
    unet_crop: int = 96
    seed: int = 0


def train(budget: Budget, out: Path = WEIGHTS, log=print) -> Path:
    """Train both stages and write `out` and its SHA256SUMS line; returns `out`."""
    torch.manual_seed(budget.seed)
    rng = np.random.default_rng(budget.seed)
    started = time.monotonic()
    pool = np.stack([synthetic_picture(rng, PICTURE_SIZE) for _ in range(budget.pictures)])
    log(f"{len(pool)} pictures made in {time.monotonic() - started:.0f} s")
    words = sorted(STYLES)
    parts = fresh_parts(words)
    train_vae(parts["vae"], pool, budget, rng, log)
    parts["vae"].register_to_config(scaling_factor=latent_scale(parts["vae"], pool[:256]))
    log(f"VAE done at {time.monotonic() - started:.0f} s; scaling factor {parts['vae'].config.scaling_factor:.4f}")
    train_denoiser(parts, pool, budget, log)
    log(f"UNet and text encoder done at {time.monotonic() - started:.0f} s")
    save_parts(parts, words, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.with_name(CHECKSUMS.name).write_text(f"{digest}  {out.name}\n")
    return out


def to_model(pictures: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 to float N x 3 x H x W in [-1, 1], as the stream pipeline feeds the VAE."""
    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def crops(pool: np.ndarray, rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Random crops of random pool pictures, mirrored half of the time."""
    picked = rng.integers(len(pool), size=count)
    tops, lefts = rng.integers(pool.shape[1] - size + 1, size=(2, count))
    out = np.stack([pool[i, t : t + size, s : s + size] for i, t, s in zip(picked, tops, lefts, strict=True)])
    mirror = rng.random(count) < 0.5
    out[mirror] = out[mirror, :, ::-1]
    return out


def cosine_lr(optimizer: torch.optim.Optimizer, step: int, total: int, peak: float, warmup: int = 50) -> None:
    scale = min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, total))))
    for group in optimizer.param_groups:
        group["lr"] = peak * scale


def train_vae(vae, pool: np.ndarray, budget: Budget, rng: np.random.Generator, log) -> None:
    """Reconstruction (squared and absolute error, colour weighted up, and a colour read-out of the latents) from the
    posterior mean, with the posterior's spread pinned near 0: the stream pipeline's posterior sample is then the
    mean to within 5e-5, what the decoder was taught on, and no sampling noise competes with the faint colour signal
    while it is learnt."""
    with torch.no_grad():
        log_variance = slice(vae.config.latent_channels, None)
        vae.quant_conv.weight[log_variance] = 0.0
        vae.quant_conv.bias[log_variance] = -20.0
    vae.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, VAE_THREADS))
    colour_probe = torch.nn.Conv2d(vae.config.latent_channels, 3, kernel_size=1)
    block = 2 ** (len(vae.config.block_out_channels) - 1)
    optimizer = torch.optim.AdamW([*vae.parameters(), *colour_probe.parameters()], lr=VAE_LR, weight_decay=0.0)
    for step in range(budget.vae_steps):
        cosine_lr(optimizer, step, budget.vae_steps, VAE_LR)
        images = to_model(crops(pool, rng, budget.vae_batch, budget.vae_crop))
        latents = vae.encode(images).latent_dist.mean
        decoded = vae.decode(latents).sample
        error = decoded - images
        chroma_error = error - error.mean(dim=1, keepdim=True)
        block_colour = torch.einsum("oc,nchw->nohw", torch.from_numpy(OPPONENT), F.avg_pool2d(images, block))
        loss = (
            error.pow(2).mean()
            + error.abs().mean()
            + CHROMA_WEIGHT * chroma_error.pow(2).mean()
            + COLOUR_PROBE_WEIGHT * (colour_probe(latents) - block_colour).pow(2).mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        vae.quant_conv.weight.grad[log_variance] = 0.0  # zero gradients leave AdamW's step at 0: stays pinned
        vae.quant_conv.bias.grad[log_variance] = 0.0
        optimizer.step()
        if step % 100 == 0 or step == budget.vae_steps - 1:
            psnr = 10 * math.log10(4 / max(error.pow(2).mean().item(), 1e-10))  # peak-to-peak 2 in [-1, 1]
            log(f"vae step {step}: loss {loss.item():.4f}, {psnr:.1f} dB on the batch")
    torch.set_num_threads(threads)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_scale(vae, pictures: np.ndarray) -> float:
    """The scaling factor that gives the posterior means of these pictures the standard deviation LATENT_STD."""
    chunks = [pictures[start : start + 32] for start in range(0, len(pictures), 32)]
    means = torch.cat([vae.encode(to_model(chunk)).latent_dist.mean for chunk in chunks])
    return LATENT_STD / means.std().item()


def random_prompt(rng: np.random.Generator) -> tuple[str, list[str]]:
    """A prompt of 0-2 style words among filler words, and the style words it holds."""
    count = rng.choice(3, p=[0.2, 0.55, 0.25])
    words = list(rng.choice(sorted(STYLES), size=count, replace=False))
    tokens = words + list(rng.choice(FILLERS, size=rng.integers(0, 7)))
    rng.shuffle(tokens)
    return " ".join(tokens), words


@dataclass(frozen=True)
class DenoiserBatch:
    """One stage-2 step's inputs: latents of the camera crops and of what they should become, and the conditions."""

    clean: torch.Tensor
    target: torch.Tensor
    prompts: list[str]
    guidance: list[float]
    setting: tuple[int, float]


class DenoiserBatches:
    """Makes stage-2 batches on a thread of its own, two ahead: restyling and VAE encoding (about a third of a step)
    run on the second core while the UNet trains. Its own generators keep the batches the same on every run."""

    def __init__(self, vae, pool: np.ndarray, budget: Budget, seed: int) -> None:
        self.vae, self.pool, self.budget = vae, pool, budget
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: queue.Queue[DenoiserBatch] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._fill, name="toy-batches", daemon=True)
        self.thread.start()

    def __next__(self) -> DenoiserBatch:
        return self.queue.get()

    def _fill(self) -> None:
        for _ in range(self.budget.unet_steps):
            self.queue.put(self._make())

    @torch.no_grad()
    def _make(self) -> DenoiserBatch:
        rng, budget = self.rng, self.budget
        # Each picture runs twice in `chain_loss`, so the UNet sees unet_batch samples.
        pictures = crops(self.pool, rng, budget.unet_batch // 2, budget.unet_crop)
        prompts, guidance, targets = [], [], []
        for picture in pictures:
            prompt, words = random_prompt(rng)
            scale = 8.0 if rng.random() < 0.5 else float(rng.uniform(1.0, 12.0))
            prompts.append(prompt)
            guidance.append(scale)
            targets.append(restyle(picture, words, style_weight(scale)))
        factor = self.vae.config.scaling_factor
        clean = factor * self.vae.encode(to_model(pictures)).latent_dist.sample(self.generator)
        target = factor * self.vae.encode(to_model(np.stack(targets))).latent_dist.mean
        setting = (2, 0.5) if rng.random() < 0.65 else SETTINGS[rng.integers(len(SETTINGS))]
        return DenoiserBatch(clean, target, prompts, guidance, setting)


def train_denoiser(parts: dict, pool: np.ndarray, budget: Budget, log) -> None:
    unet, text_encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    cpu = torch.device("cpu")
    schedules = {
        setting: build_schedule(parts["scheduler"], ScheduleKind.LCM_IMG2IMG, *setting, cpu, torch.float32)
        for setting in SETTINGS
    }
    unet.train()
    text_encoder.train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=0.0)
    batches = DenoiserBatches(parts["vae"], pool, budget, budget.seed + 1)
    for step in range(budget.unet_steps):
        cosine_lr(optimizer, step, budget.unet_steps, UNET_LR)
        batch = next(batches)
        ids = tokenizer(batch.prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        hidden = text_encoder(ids.input_ids)[0]
        cond = torch.cat([guidance_embedding(w, GUIDANCE_EMBEDDING_DIM, cpu, torch.float32) for w in batch.guidance])
        loss = chain_loss(unet, schedules[batch.setting], batch.clean, batch.target, hidden, cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == budget.unet_steps - 1:
            steps, strength = batch.setting
            log(f"unet step {step}: loss {loss.item():.4f} at {steps} steps, strength {strength}")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


def chain_loss(
    unet, schedule: Schedule, clean: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """The stream pipeline's img2img chain from `clean` latents, each step's denoised latents against `target`, each
    picture twice under two noise draws (NOISE_INVARIANCE).

    Each step starts from the previous step's output re-noised, as at inference; gradients stop between steps.
    """
    clean, target, hidden, cond = (torch.cat([part, part]) for part in (clean, target, hidden, cond))
    latents = schedule.noise_sqrt_alpha * clean + schedule.noise_sqrt_beta * torch.randn_like(clean)
    losses = []
    for step in schedule.steps:
        noise_pred = unet(latents, step.timestep, encoder_hidden_states=hidden, timestep_cond=cond).sample
        predicted = (latents - step.sqrt_beta * noise_pred) / step.sqrt_alpha
        denoised = step.c_out * predicted + step.c_skip * latents
        first, second = denoised.chunk(2)
        losses.append(F.mse_loss(denoised, target) + NOISE_INVARIANCE * F.mse_loss(first, second))
        if not step.is_last:
            latents = step.sqrt_alpha_prev * denoised.detach() + step.sqrt_beta_prev * torch.randn_like(clean)
    # In units of the latents' variance, so that the logged losses compare across LATENT_STD.
    return torch.stack(losses).mean() / LATENT_STD**2


def main(argv: list[str] | None = None) -> int:
    defaults = Budget()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.toy.train", description=__doc__ and __doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS, help=f"where to write the weights (default {WEIGHTS})")
    # One thread per op: on a busy 2-core machine, two made a VAE step over 3x slower (they wait on each other);
    # the second core makes stage 2's batches instead.
    parser.add_argument("--threads", type=int, default=1, help="torch threads per op (default 1)")
    for field, value in vars(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    if args.out.is_dir():  # a folder: the weights go in it under their usual name (found at the end, 20 min in)
        args.out = args.out / WEIGHTS.name
    torch.set_num_threads(args.threads)
    budget = Budget(**{field: getattr(args, field) for field in vars(defaults)})
    started = time.monotonic()
    out = train(budget, args.out, log=lambda line: print(f"[{time.monotonic() - started:7.1f} s] {line}", flush=True))
    print(f"wrote {out} in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
