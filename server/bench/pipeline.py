"""`lcmlive bench`: the LCM guide's way (a diffusers pipeline called with a PIL image per frame) against the
stream pipeline, same model, size, steps and strength."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from pipelines import FrameExecutor, GuidanceKind, ModelComponents, StreamPipeline, load_model
from pipelines.compiled import compile_model, compiled_graphs
from pipelines.control import CONTROL_KINDS
from pipelines.params import MODES, steps_that_run
from pipelines.presets import ScheduleKind
from pipelines.synthetic import moving_pattern
from pipelines.timing import ModelCallTimer


@dataclass
class RunStats:
    """Per-frame wall times of one way of running, and the part of each spent inside model calls.

    Rates come from medians: a shared 2-core machine has pauses that would swamp a mean over 20 frames.
    """

    name: str
    frame_seconds: list[float] = field(default_factory=list)
    model_seconds: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.frame_seconds) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.frame_seconds)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000

    @property
    def fps(self) -> float:
        return 1000 / self.median_ms

    @property
    def model_ms(self) -> float:
        return statistics.median(self.model_seconds) * 1000

    @property
    def overhead_ratio(self) -> float:
        """Frame time over time inside the model, per frame, then the median."""
        return statistics.median(f / m for f, m in zip(self.frame_seconds, self.model_seconds, strict=True))


def reference_pipeline(components: ModelComponents, mode: str, controls: Sequence[str] = ()):
    """The diffusers pipeline the LCM guide uses for this family, mode and ControlNet kinds (several: diffusers'
    MultiControlNetModel, in the given order), on the same components."""
    import diffusers

    sdxl = components.is_sdxl
    embedded = components.preset.guidance is GuidanceKind.EMBEDDED
    if controls:
        name = {"img2img": "StableDiffusionControlNetImg2ImgPipeline", "txt2img": "StableDiffusionControlNetPipeline"}
        name = name[mode].replace("StableDiffusion", "StableDiffusionXL") if sdxl else name[mode]
    elif sdxl:
        name = {"img2img": "StableDiffusionXLImg2ImgPipeline", "txt2img": "StableDiffusionXLPipeline"}[mode]
    elif embedded:
        name = {"img2img": "LatentConsistencyModelImg2ImgPipeline", "txt2img": "LatentConsistencyModelPipeline"}[mode]
    else:
        name = {"img2img": "StableDiffusionImg2ImgPipeline", "txt2img": "StableDiffusionPipeline"}[mode]
    parts = {
        "unet": components.unet,
        "vae": components.vae,
        "text_encoder": components.text_encoder,
        "tokenizer": components.tokenizer,
        "scheduler": diffusers.LCMScheduler.from_config(components.scheduler.config),
    }
    if sdxl:
        parts.update(text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if controls:
        nets = [components.controlnets[kind] for kind in controls]
        parts["controlnet"] = nets[0] if len(nets) == 1 else nets
    pipe = getattr(diffusers, name)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass(frozen=True)
class GuideWay:
    """The guide's way of running one frame, and the settings it runs at (see `equal_work`)."""

    run: Callable[[np.ndarray], np.ndarray]
    num_inference_steps: int
    guidance_scale: float
    classifier_free: bool


def reference_classifier_free(pipe, guidance_scale: float) -> bool:
    """Whether the diffusers pipeline runs classifier-free guidance (the UNet on a batch of 2) at this guidance.

    diffusers 0.42: for guidance_scale > 1, unless the UNet takes guidance as an embedding (time_cond_proj_dim);
    the ControlNet img2img pipelines even then, passing the UNet no embedding; the LCM pipelines never.
    """
    name = type(pipe).__name__
    if guidance_scale <= 1 or name.startswith("LatentConsistencyModel"):
        return False
    return pipe.unet.config.time_cond_proj_dim is None or "ControlNetImg2Img" in name


def equal_work(pipe, stream: StreamPipeline) -> tuple[int, float]:
    """The num_inference_steps and guidance_scale at which the diffusers pipeline does the stream pipeline's work
    per frame: as many denoising steps, each on as many latents.

    They differ by default with an LCM UNet in the ControlNet img2img pipelines, which run int(steps x strength)
    steps where the stream pipeline keeps the LCM rule (all `steps`), and classifier-free guidance (batch 2) where
    the stream pipeline gives the UNet its guidance embedding (batch 1).
    """
    params = stream.params
    guidance_scale = params.guidance_scale
    if reference_classifier_free(pipe, guidance_scale) and not stream.classifier_free:
        guidance_scale = 1.0  # classifier-free guidance off; these pipelines use guidance_scale for nothing else
    lcm = type(pipe).__name__.startswith("LatentConsistencyModel")
    kind = ScheduleKind.LCM_IMG2IMG if lcm else ScheduleKind.SD_IMG2IMG
    strength = None if params.mode == "txt2img" else params.strength
    origin_steps = pipe.scheduler.config.original_inference_steps
    for steps in range(params.steps, origin_steps + 1):
        if steps_that_run(kind, steps, strength, origin_steps) == stream.steps_per_frame:
            return steps, guidance_scale
    raise ValueError(f"{type(pipe).__name__} runs no {stream.steps_per_frame} steps at strength {params.strength}")


def guide_way(components: ModelComponents, stream: StreamPipeline, controlnet: str | None) -> GuideWay:
    """One frame the LCM guide's way: PIL in, the diffusers pipeline, PIL out, the control image (Canny with OpenCV)
    each frame; at the stream pipeline's parameters, changed only where needed for equal work."""
    params = stream.params
    pipe = reference_pipeline(components, params.mode, [controlnet] if controlnet else [])
    num_inference_steps, guidance_scale = equal_work(pipe, stream)

    def run(frame: np.ndarray) -> np.ndarray:
        kwargs: dict = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
        control = None
        if controlnet:
            control = PIL.Image.fromarray(components.preprocessors[controlnet](frame, params))
            kwargs["controlnet_conditioning_scale"] = getattr(params, f"controlnet_scale_{controlnet}")
        if params.mode == "img2img":
            kwargs.update(image=PIL.Image.fromarray(frame), strength=params.strength)
            if controlnet:
                kwargs["control_image"] = control
        else:
            kwargs.update(width=frame.shape[1], height=frame.shape[0])
            if controlnet:
                kwargs["image"] = control
        return np.asarray(pipe(params.prompt, output_type="pil", **kwargs).images[0])

    return GuideWay(run, num_inference_steps, guidance_scale, reference_classifier_free(pipe, guidance_scale))


def both_ways(
    components: ModelComponents, mode: str, controlnet: str, steps: int, strength: float
) -> tuple[StreamPipeline, GuideWay]:
    """The stream pipeline and the guide's way for one mode and ControlNet choice, set for the same work."""
    kind = None if controlnet == "none" else controlnet
    stream = StreamPipeline(components)
    changes = {"steps": steps, "strength": strength, "mode": mode}
    for loaded in components.control_kinds:
        changes[f"controlnet_scale_{loaded}"] = 0.5 if loaded == kind else 0.0
    stream.update(**changes)
    return stream, guide_way(components, stream, kind)


def bench_combination(components: ModelComponents, args: argparse.Namespace, mode: str, controlnet: str) -> dict:
    """The guide's way and the stream pipeline on the same frames, interleaved; the numbers of one combination."""
    stream, guide = both_ways(components, mode, controlnet, args.steps, args.strength)
    params = stream.params
    frames = [moving_pattern(args.size, args.size, i) for i in range(args.frames + args.warmup)]
    for frame in frames[: args.warmup]:
        guide.run(frame)
        stream(frame)
    runs = {"naive": RunStats("diffusers pipeline + PIL"), "stream": RunStats("stream pipeline")}
    ways: dict[str, Callable[[np.ndarray], np.ndarray]] = {"naive": guide.run, "stream": stream}
    timer = ModelCallTimer(components.device)
    modules = [components.unet, components.vae, components.text_encoder]
    with timer.attach(*modules, extra=[components.text_encoder_2, *components.controlnets.values()]):
        # Interleaved frame by frame, so that a noisy neighbour on the machine slows both ways alike.
        for frame in frames[args.warmup :]:
            for key, way in ways.items():
                timer.reset()
                start = time.perf_counter()
                way(frame)
                runs[key].frame_seconds.append(time.perf_counter() - start)
                runs[key].model_seconds.append(timer.seconds)
    naive_stats, stream_stats = runs["naive"], runs["stream"]
    print(f"\n{mode}, controlnet {controlnet}:")
    if (guide.num_inference_steps, guide.guidance_scale) != (params.steps, params.guidance_scale):
        print(
            f"  for equal work, the diffusers pipeline runs at num_inference_steps {guide.num_inference_steps}, "
            f"guidance_scale {guide.guidance_scale:g}"
        )
    print(f"  {'way':<26}{'median ms':>10}{'p95 ms':>9}{'fps':>8}{'model ms':>10}{'overhead':>10}")
    for run in (naive_stats, stream_stats):
        print(
            f"  {run.name:<26}{run.median_ms:>10.1f}{run.p95_ms:>9.1f}{run.fps:>8.2f}"
            f"{run.model_ms:>10.1f}{run.overhead_ratio:>10.3f}"
        )
    return {
        "mode": mode,
        "controlnet": controlnet,
        "steps": params.steps,
        "strength": params.strength,
        "guidance_scale": params.guidance_scale,
        # Equal work: the same denoising steps per frame and latents per UNet call (2: classifier-free guidance).
        "steps_per_frame": stream.steps_per_frame,
        "unet_batch": 2 if stream.classifier_free else 1,
        "naive_num_inference_steps": guide.num_inference_steps,
        "naive_guidance_scale": guide.guidance_scale,
        "naive_unet_batch": 2 if guide.classifier_free else 1,
        "naive_fps": round(naive_stats.fps, 3),
        "stream_fps": round(stream_stats.fps, 3),
        "speedup": round(stream_stats.fps / naive_stats.fps, 3),
        "naive_median_ms": round(naive_stats.median_ms, 2),
        "stream_median_ms": round(stream_stats.median_ms, 2),
        "stream_p95_ms": round(stream_stats.p95_ms, 2),
        "stream_model_ms": round(stream_stats.model_ms, 2),
        "naive_model_ms": round(naive_stats.model_ms, 2),
        "overhead_ratio": round(stream_stats.overhead_ratio, 4),
    }


def run_pipeline_bench(args: argparse.Namespace) -> dict:
    modes = _choices(args.mode, MODES, "--mode")
    controlnets = _choices(args.controlnet, ("none", *CONTROL_KINDS), "--controlnet")
    kinds = [c for c in controlnets if c != "none"]
    components = load_model(args.model, device=args.device, controlnet=kinds, tiny_vae=args.tiny_vae)
    print(
        f"model {args.model} on {components.device} ({str(components.dtype).removeprefix('torch.')}), "
        f"{args.size}x{args.size}, steps {args.steps}, strength {args.strength}, {args.frames} frames"
    )
    runs = [bench_combination(components, args, mode, cn) for mode in modes for cn in controlnets]
    if args.double_buffer:
        runs[0].update(compare_double_buffering(components, args))
    if args.compile:  # last: the model stays compiled
        runs[0].update(compare_compiled(components, args))
    context = {
        "model": args.model,
        "device": str(components.device),
        "dtype": str(components.dtype).removeprefix("torch."),
        "size": args.size,
        "frames": args.frames,
    }
    # The first combination's numbers stand at the top level; every combination is in "runs".
    return {**context, **runs[0], "runs": runs}


def compare_double_buffering(components: ModelComponents, args: argparse.Namespace) -> dict:
    """Frames back to back, one at a time and through the double-buffered executor (two in flight)."""
    stream = StreamPipeline(components)
    stream.update(steps=args.steps, strength=args.strength)
    frames = [moving_pattern(args.size, args.size, i) for i in range(args.frames)]
    for frame in frames[: args.warmup]:
        stream(frame)
    start = time.perf_counter()
    for frame in frames:
        stream(frame)
    one_at_a_time = len(frames) / (time.perf_counter() - start)
    executor = FrameExecutor(components.device)
    try:
        tickets: list[int] = []
        collected = 0
        start = time.perf_counter()
        for frame in frames:
            if executor.in_flight == 2:
                executor.result(tickets[collected])[0]
                collected += 1
            tickets.append(executor.submit([stream.prepare(frame)]))
        for ticket in tickets[collected:]:
            executor.result(ticket)[0]
        double_buffered = len(frames) / (time.perf_counter() - start)
    finally:
        executor.close()
    print(f"\n  frames back to back: {one_at_a_time:.2f} fps one at a time, {double_buffered:.2f} fps double-buffered")
    return {
        "sequential_fps": round(one_at_a_time, 3),
        "double_buffered_fps": round(double_buffered, 3),
        "double_buffer_speedup": round(double_buffered / one_at_a_time, 3),
    }


def compare_compiled(components: ModelComponents, args: argparse.Namespace) -> dict:
    """Frames back to back at --size, eager, then with the UNet and VAE decoder compiled (pipelines/compiled.py):
    the compile's seconds and the speedup after it."""
    frames = [moving_pattern(args.size, args.size, i) for i in range(args.frames)]

    def frames_per_second() -> float:
        stream = StreamPipeline(components)
        stream.update(steps=args.steps, strength=args.strength)
        for frame in frames[: args.warmup]:
            stream(frame)
        start = time.perf_counter()
        for frame in frames:
            stream(frame)
        return len(frames) / (time.perf_counter() - start)

    eager = frames_per_second()
    compiled = compile_model(components)
    graphs = compiled_graphs()
    compile_seconds = compiled.warm((args.size, args.size))
    made = compiled_graphs()
    fast = frames_per_second()
    recompiles = compiled_graphs() - made  # the stream's own steps and strength after warming: 0 expected
    print(
        f"\n  compiled ({compiled.mode}): {made - graphs} graphs in {compile_seconds:.1f} s; frames back to back "
        f"{eager:.2f} fps eager, {fast:.2f} fps compiled ({fast / eager:.2f}x); recompiles after warming {recompiles}"
    )
    return {
        "compile_mode": compiled.mode,
        "compile_seconds": round(compile_seconds, 1),
        "compiled_graphs": made - graphs,
        "eager_fps": round(eager, 3),
        "compiled_fps": round(fast, 3),
        "compile_speedup": round(fast / eager, 3),
        "recompiles_after_warming": recompiles,
    }


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [v for v in chosen if v not in allowed]
    if wrong or not chosen:
        raise ValueError(f"{flag}: {', '.join(wrong) or 'nothing'} not in {', '.join(allowed)}")
    return chosen
