"""Sampling speed and memory of AnyDoorPipeline for a matrix of settings (issue 10).

Per setting: wall time per sample, denoising steps per second and peak
memory, each relative to the released way of sampling measured in the same
run (both guidance branches one after the other, one detail-extractor call
per step, fp32, DDIM 50). Settings:

- guidance: "batched" (both branches in one batch, the default) or
  "sequential" (the released code's two passes per step);
- detail features: "per-step", "batched" (every step's detail residuals in
  one pass before the loop: they never see the noisy latent, DESIGN.md 1c)
  or "auto" (the pipeline's default: batched on CUDA in chunks sized from
  the free memory, per step elsewhere);
- dtype, memory format (channels_last), torch.compile, scheduler and steps.

Models: ``embedded`` (the embedded default, 64 px) or ``full`` (the released
architecture: SD2.1-base UNet + detail extractor + VAE + DINOv2-g, random
weights, since speed does not depend on the values; 512 px). On a CPU the
full size runs 2 steps (the table says so): one 50-step sample would take
about an hour there.

``--released`` adds the side by side with the released sampling loop: a tiny
checkpoint in the released layout (the converter's test mapping, every tensor
random) converted with `anydoor.convert_released`, then sampled on the same
weights by this pipeline and by a re-implementation of the released loop
(two guidance passes per step, fp32, DDIM 50 written out from the released
sampler's formulas), with the largest difference between their crops.

Peak memory: on CUDA, torch's peak allocated bytes during the call; on a
CPU, the process's resident memory sampled every 2 ms during the call, above
what it was before the call (approximate: the allocator may keep freed pages).

    python benchmarks/bench_sampling.py --model embedded --released --out bench.md
    python benchmarks/bench_sampling.py --model full --steps 2 --only released-way batched-guidance batched-detail
    python benchmarks/bench_sampling.py --matrix gpu --model full --device cuda   # what gpu.sh runs

Not a test: numbers depend on the machine (and, on a shared CPU, its load).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MATRICES = ("ladder", "gpu")
BASELINE = "released-way"


@dataclass(frozen=True)
class Setting:
    name: str
    guidance: str = "batched"  # "batched" | "sequential"
    detail: str = "per-step"  # "per-step" | "batched" | "auto" (the pipeline's default rule)
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    scheduler: str = "ddim"
    steps: int = 50
    batch: int = 1


def ladder(steps: int, fewer_steps: int, bf16: bool, compile_: bool, batch: int) -> list[Setting]:
    """One change at a time, from the released way to the fastest settings.
    fp32 settings first (a bf16 round trip would round the weights), compile last (in place)."""
    base = Setting(BASELINE, guidance="sequential", steps=steps, batch=batch)
    settings = [
        base,
        replace(base, name="batched-guidance", guidance="batched"),
        replace(base, name="batched-detail", guidance="batched", detail="batched"),
        replace(base, name="sequential+batched-detail", detail="batched"),
        replace(base, name="batched+channels_last", guidance="batched", detail="batched", channels_last=True),
    ]
    fast = replace(base, guidance="batched", detail="batched")
    if steps > fewer_steps:
        settings += [
            replace(fast, name=f"dpm++2m-{fewer_steps}", scheduler="dpm++2m", steps=fewer_steps),
            replace(fast, name=f"unipc-{fewer_steps}", scheduler="unipc", steps=fewer_steps),
        ]
    if bf16:
        settings += [
            replace(fast, name="batched-bf16", dtype="bfloat16"),
            replace(fast, name="per-step-bf16", dtype="bfloat16", detail="per-step"),
        ]
    if compile_:
        settings.append(replace(fast, name="batched-compiled", dtype="bfloat16" if bf16 else "float32", compile=True))
    return settings


def gpu_matrix(steps: int, fewer_steps: int) -> list[Setting]:
    """gpu.sh: bf16, DDIM `steps` and DPM-Solver++ `fewer_steps`, batch 1 and 4,
    per-step vs batched detail features, compiled once; the fp32 released way first."""
    settings = [Setting(BASELINE, guidance="sequential", steps=steps)]
    for scheduler, n in (("ddim", steps), ("dpm++2m", fewer_steps)):
        for batch in (1, 4):
            for detail in ("per-step", "batched"):
                settings.append(Setting(f"bf16-{scheduler}{n}-b{batch}-{detail}", detail=detail, dtype="bfloat16",
                                        scheduler=scheduler, steps=n, batch=batch))
    # The automatic mode (on CUDA: batched, in chunks sized from free memory).
    settings.append(Setting(f"bf16-ddim{steps}-b4-auto", detail="auto", dtype="bfloat16", steps=steps, batch=4))
    settings.append(Setting(f"bf16-ddim{steps}-b1-batched-compiled", detail="batched", dtype="bfloat16",
                            compile=True, steps=steps))
    return settings


# ------------------------------------------------------------------ models
def build_pipeline(model: str, device: str):
    from anydoor.pipeline_anydoor import AnyDoorPipeline
    from anydoor.presets import full_size_components, tiny_pipeline

    if model == "embedded":
        pipe = tiny_pipeline(seed=0).to(device)
    else:
        # Random weights, built on the target device (no 10 GB CPU copy first).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pipe = AnyDoorPipeline(**full_size_components(device), image_size=512)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    classes = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    if name not in classes:
        raise ValueError(f"scheduler {name!r} is not one of {', '.join(classes)}")
    # DPMSolverMultistepScheduler's defaults are DPM-Solver++ of order 2 (2M).
    return classes[name].from_config(config)


def make_inputs(image_size: int, batch: int, seed: int = 0) -> dict:
    """A random object with a mask and a scene 1.5x the crop side, `batch` seeds."""
    rng = np.random.default_rng(seed)
    side = max(48, image_size * 3 // 4)
    obj = rng.integers(0, 255, (side, side * 5 // 6, 3), dtype=np.uint8)
    obj_mask = np.zeros(obj.shape[:2], bool)
    obj_mask[side // 8 : -side // 8, side // 8 : -side // 8] = True
    scene_side = max(96, image_size * 3 // 2)
    scene = rng.integers(0, 255, (scene_side, scene_side, 3), dtype=np.uint8)
    box = (scene_side // 3, scene_side // 3, scene_side * 2 // 3, scene_side * 2 // 3)
    return dict(object_image=obj, object_mask=obj_mask, scene_image=scene, scene_box=box,
                num_images_per_prompt=batch, guidance_scale=5.0, output_type="pt")


# ------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_cpu_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed pages; give them back so the next baseline is low
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA's peak allocated bytes, or the CPU
    process's resident memory sampled every 2 ms above its value at entry."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _release_cpu_memory()
            self.start = _rss_bytes()
            self._stop = threading.Event()
            self._high = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._high = max(self._high, _rss_bytes())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            self.above_start = self.peak - self.start
        else:
            self._stop.set()
            self._thread.join()
            self._high = max(self._high, _rss_bytes())
            self.peak = self._high
            self.above_start = self._high - self.start
        return False


# ----------------------------------------------------------------- running
def _call(pipe, inputs: dict, setting: Setting, device: str):
    generators = [torch.Generator().manual_seed(s) for s in range(setting.batch)]
    return pipe(
        **inputs,
        num_inference_steps=setting.steps,
        generator=generators,
        sequential_guidance=setting.guidance == "sequential",
        batched_detail_features={"per-step": False, "batched": True, "auto": None}[setting.detail],
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def apply_setting(pipe, setting: Setting, base_scheduler_config, compiled: bool, compile_backend: str) -> bool:
    """Put the pipeline in the setting's dtype, memory format, scheduler and
    compile state; returns whether it is compiled now."""
    dtype = getattr(torch, setting.dtype)
    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    pipe.set_memory_format(torch.channels_last if setting.channels_last else torch.contiguous_format)
    pipe.scheduler = make_scheduler(setting.scheduler, base_scheduler_config)
    if setting.compile and not compiled:
        pipe.compile_denoiser(backend=compile_backend)
        return True
    if compiled and not setting.compile:
        raise ValueError(
            f"setting {setting.name!r} is not compiled but the pipeline already is: put compiled settings last"
        )
    return compiled


def measure(pipe, setting: Setting, device: str, warmup: int, repeats: int) -> dict:
    inputs = make_inputs(pipe.config.image_size, setting.batch)
    start = time.perf_counter()
    first = None
    for _ in range(warmup):
        _call(pipe, inputs, setting, device)
        _sync(device)
        first = first if first is not None else time.perf_counter() - start
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            t0 = time.perf_counter()
            _call(pipe, inputs, setting, device)
            _sync(device)
            times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    return {
        "seconds_per_call": seconds,
        "seconds_per_sample": seconds / setting.batch,
        "steps_per_second": setting.steps / seconds,
        "peak_mib": memory.peak / 2**20,
        "peak_above_start_mib": memory.above_start / 2**20,
        "first_call_s": first if first is not None else times[0],
    }


# ----------------------------------------------------- released loop (side by side)
def write_tiny_released_checkpoint(folder: Path) -> tuple[Path, dict]:
    """A tiny checkpoint in the released layout with every tensor random,
    written with the converter tests' inverse mapping; returns (file, YAML dict)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    # The inverse mapping (diffusers -> released names) lives with the converter's tests.
    spec = importlib.util.spec_from_file_location("test_convert_released", ROOT / "tests" / "test_convert_released.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)

    blocks = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64),
                  layers_per_block=t.LAYERS, attention_head_dim=(4, 8), cross_attention_dim=t.CONTEXT,
                  use_linear_projection=True)
    unet = t._randomise(UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **blocks), 1)
    controlnet = t._randomise(ControlNetModel(in_channels=4, conditioning_channels=4,
                                              conditioning_embedding_out_channels=t.HINT_CHANNELS, **blocks), 2)
    vae = t._randomise(AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32,) * 4,
                                     layers_per_block=1, latent_channels=4, sample_size=64), 3)
    g = torch.Generator().manual_seed(4)
    state_dict = {
        **t.unet_to_ldm(unet.state_dict(), t.LAYERS),
        **t.controlnet_to_ldm(controlnet.state_dict(), t.LAYERS),
        **t.vae_to_ldm(vae.state_dict()),
        **t._original_dinov2(5),
        "cond_stage_model.projector.weight": torch.randn(t.CONTEXT, t.DINO_WIDTH, generator=g) * 0.05,
        "cond_stage_model.projector.bias": torch.randn(t.CONTEXT, generator=g) * 0.05,
        **t._schedule_buffers(),
    }
    path = folder / "released_tiny.ckpt"
    torch.save({"state_dict": {k: v.detach().clone().contiguous() for k, v in state_dict.items()}}, path)
    return path, t.TINY_YAML


@torch.no_grad()
def released_loop(pipe, inputs: dict, steps: int, seed: int) -> torch.Tensor:
    """The released sampling loop on this pipeline's networks: DDIM (eta 0,
    "uniform" discretisation, timesteps 1 + k * 1000 // steps), per step the
    conditional and then the unconditional pass (each a detail-extractor and a
    UNet call), fp32, then the VAE decode. Returns crops in [0, 1]."""
    from anydoor.models.denoiser import predict_noise

    sample = pipe.prepare_inputs(inputs["object_image"], inputs["object_mask"], inputs["scene_image"],
                                 scene_box=inputs["scene_box"])
    reference = torch.from_numpy(sample.reference).permute(2, 0, 1)[None]
    hint = torch.from_numpy(sample.hint).permute(2, 0, 1)[None]
    cond = pipe.id_extractor(reference)
    uncond = pipe.id_extractor(torch.zeros_like(reference))  # the all-zero image's tokens
    # LatentDiffusion's "linear" schedule (linear in sqrt(beta)), float64 like the released code
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    ddim_timesteps = np.arange(0, 1000, 1000 // steps) + 1
    alphas = alphas_cumprod[ddim_timesteps].float()
    alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[ddim_timesteps[:-1]]]).float()
    side = pipe.config.image_size // pipe.vae_scale_factor
    x = torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(seed))
    scale = inputs["guidance_scale"]
    for index in reversed(range(len(ddim_timesteps))):
        t = torch.full((1,), int(ddim_timesteps[index]), dtype=torch.long)
        e_cond = predict_noise(pipe.unet, pipe.controlnet, x, t, cond, hint)
        e_uncond = predict_noise(pipe.unet, pipe.controlnet, x, t, uncond, hint)
        e = e_uncond + scale * (e_cond - e_uncond)
        a, a_prev = alphas[index], alphas_prev[index]
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    return ((image.clamp(-1, 1) + 1) / 2).cpu()


def side_by_side(steps: int, warmup: int, repeats: int) -> list[str]:
    from anydoor.convert_released import convert_released_checkpoint
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    with tempfile.TemporaryDirectory() as tmp:
        ckpt, config = write_tiny_released_checkpoint(Path(tmp))
        out = convert_released_checkpoint(ckpt, Path(tmp) / "pipeline", config=config)
        pipe = AnyDoorPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    inputs = make_inputs(pipe.config.image_size, 1)
    inputs.pop("num_images_per_prompt")
    runs = {
        "released loop (2 passes/step, fp32, DDIM)": lambda: released_loop(pipe, inputs, steps, seed=0),
        "this pipeline, defaults": lambda: pipe(**inputs, num_inference_steps=steps,
                                                generator=torch.Generator().manual_seed(0)).crops,
        "this pipeline, batched detail features": lambda: pipe(
            **inputs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
            batched_detail_features=True).crops,
    }
    results = {}
    for name, run in runs.items():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            crops = run()
            times.append(time.perf_counter() - t0)
        results[name] = (float(np.median(times)), crops)
    base_time, base_crops = next(iter(results.values()))
    lines = [
        f"Side by side on a converted tiny released-layout checkpoint ({pipe.config.image_size} px, DDIM {steps}, "
        "guidance 5.0, same weights, same noise, same run):",
        "",
        "| sampler | s/sample | vs released loop | max abs diff of the crops vs released loop |",
        "|---|---:|---:|---:|",
    ]
    for name, (seconds, crops) in results.items():
        diff = float((crops - base_crops).abs().max())
        lines.append(f"| {name} | {seconds:.3f} | {base_time / seconds:.2f}x | {diff:.1e} |")
    return lines


# ------------------------------------------------------------------- table
def _describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, torch threads {torch.get_num_threads()}"


def render(header: list[str], settings: list[Setting], rows: dict[str, dict]) -> str:
    base = rows.get(BASELINE)
    lines = [*header, "",
             "| setting | guidance | detail features | dtype | channels_last | compiled | scheduler | steps | batch "
             "| s/sample | steps/s | peak MiB | peak above start MiB | first call s | speed vs released way |",
             "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in settings:
        r = rows.get(s.name)
        cells = [s.name, s.guidance, s.detail, s.dtype, "yes" if s.channels_last else "", "yes" if s.compile else "",
                 s.scheduler, str(s.steps), str(s.batch)]
        if r is None:
            cells += ["not run"] + [""] * 5
        elif "skipped" in r:
            cells += [r["skipped"]] + [""] * 5
        else:
            speed = ""
            if base and "skipped" not in base:
                speed = f"{base['seconds_per_sample'] / r['seconds_per_sample']:.2f}x"
            cells += [f"{r['seconds_per_sample']:.3f}", f"{r['steps_per_second']:.3g}", f"{r['peak_mib']:.0f}",
                      f"{r['peak_above_start_mib']:.0f}", f"{r['first_call_s']:.2f}", speed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("embedded", "full"), default="embedded",
                        help="embedded default (64 px) or the released architecture with random weights (512 px)")
    parser.add_argument("--matrix", choices=MATRICES, default="ladder",
                        help="ladder: one change at a time from the released way; gpu: gpu.sh's matrix")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--steps", type=int, default=None,
                        help="DDIM steps (default 50; 2 for the full size on a CPU)")
    parser.add_argument("--fewer-steps", type=int, default=20, help="DPM-Solver++ / UniPC steps")
    parser.add_argument("--batch", type=int, default=1, help="samples per call (ladder)")
    parser.add_argument("--bf16", action="store_true", help="add bfloat16 settings (ladder)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile setting, run last (ladder)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these settings (the baseline always runs)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls per setting (default 1; 0 for full on CPU: then one 1-step call first)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per setting (default 3; 1 for full on CPU)")
    parser.add_argument("--released", action="store_true", help="add the side by side with the released loop")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: skip settings once spent; compiled settings need --compile-reserve left")
    parser.add_argument("--compile-reserve", type=float, default=150.0, help="seconds a compiled setting needs")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--dry-run", action="store_true",
                        help="the matrix's code path on the embedded default, 2 steps, 1 call per setting, "
                             "torch.compile through dynamo only (backend 'eager')")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # dtype casts warn on every .to()
    started = time.perf_counter()
    model = "embedded" if args.dry_run else args.model
    cpu_full = model == "full" and not args.device.startswith("cuda")
    steps = 2 if args.dry_run else args.steps or (2 if cpu_full else 50)
    fewer = 2 if args.dry_run else args.fewer_steps
    warmup = 0 if args.dry_run else args.warmup if args.warmup is not None else (0 if cpu_full else 1)
    repeats = 1 if args.dry_run else args.repeats or (1 if cpu_full else 3)
    compile_backend = "eager" if args.dry_run else args.compile_backend
    if args.matrix == "gpu":
        settings = gpu_matrix(steps, fewer)
    else:
        settings = ladder(steps, fewer, args.bf16, args.compile, args.batch)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in settings})
        if unknown:
            raise SystemExit(f"--only: unknown settings {unknown}; known: {[s.name for s in settings]}")
        settings = [s for s in settings if s.name == BASELINE or s.name in args.only]

    pipe = build_pipeline(model, args.device)
    base_scheduler_config = pipe.scheduler.config
    params = sum(p.numel() for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters())
    import diffusers

    header = [
        f"AnyDoorPipeline sampling, {model} model ({pipe.config.image_size} px, {params / 1e6:.1f}M parameters"
        f"{', random weights' if model == 'full' else ''}) on {args.device} ({_describe_device(args.device)}), "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        f"Guidance 5.0; median of {repeats} timed call(s) after {warmup} untimed; speed relative to '{BASELINE}' "
        "(sequential guidance, per-step detail features, fp32, DDIM) measured in this run.",
    ]
    if cpu_full:
        header.append(f"CPU: {steps} denoising steps per sample at 512 px (not 50), so the fixed costs "
                      "(DINOv2-g, VAE decode) weigh more than in a 50-step sample.")
    if any(s.compile for s in settings):
        header.append(f"Compiled settings: UNet and detail extractor through torch.compile(backend="
                      f"{compile_backend!r}); 'first call s' includes the compilation.")
    if args.dry_run:
        header.append("DRY RUN: the matrix's code path on the embedded default, 2 steps: not a measurement.")

    rows: dict[str, dict] = {}
    compiled = False

    def write() -> str:
        table = render(header, settings, rows)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table)
        return table

    if warmup == 0:
        # One untimed 1-step call first, so that one-time costs (lazy
        # initialisation, first touch of the weights' pages) do not land on
        # the first setting, the baseline.
        measure(pipe, replace(settings[0], steps=1), args.device, warmup=0, repeats=1)
    for setting in settings:
        elapsed = time.perf_counter() - started
        if args.time_budget is not None:
            needed = args.compile_reserve if setting.compile and not compiled else 0.0
            if elapsed + needed > args.time_budget:
                rows[setting.name] = {"skipped": f"skipped (time budget, {elapsed:.0f} s spent)"}
                write()
                continue
        compiled = apply_setting(pipe, setting, base_scheduler_config, compiled, compile_backend)
        rows[setting.name] = measure(pipe, setting, args.device, warmup, repeats)
        seconds = rows[setting.name]["seconds_per_sample"]
        print(f"[{time.perf_counter() - started:6.1f} s] {setting.name}: {seconds:.3f} s/sample", flush=True)
        write()
    table = write()
    if args.released:
        lines = side_by_side(steps, warmup, repeats)
        table += "\n" + "\n".join(lines) + "\n"
        if args.out is not None:
            args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
