"""Recipe variants of the embedded default's full method, one change each (issue 8).

Trains the full method with `configs/train_tiny.yaml` plus one named change,
evaluates it on the benchmark (16 pairs x 2 seeds, random metric backbones,
the demo's sampler unless the variant changes it) and scores it against
copy-paste, the bar `make demo` must clear, with the evaluation's own paired
statistics (`eval.stats.compare`). This is the script behind the
"recipe variants" tables of docs/ARCHITECTURE.md.

    python benchmarks/recipe_variants.py --list
    python benchmarks/recipe_variants.py demo hint-init zero-terminal-snr [--out runs/recipe_variants]

Each variant trains into ``OUT/<variant>/`` (a finished one is reused, so a
sampling-only variant such as ``ddim-10`` shares ``demo``'s model), appends one
JSON line to ``OUT/results.jsonl`` and writes its per-(pair, seed) rows to
``OUT/<variant>/results.csv``. About 80 s per 300-step variant on 2 CPU cores.

Some variants are departures that the library deliberately does not offer
(per-group learning rates, a non-zero-initialised hint embedding, zero terminal
SNR, a shared warm start of the UNet and detail extractor). They are applied
here as `unittest.mock` patches of the library for the variant's training
*and* evaluation, and undone afterwards; nothing here changes what `anydoor
train` does. The ``x0-step-K`` variants are diagnostics, not methods: the
demo's model scored on the x0 it predicts at DDIM step K. A warm-start
variant's ``train_s`` includes the warm start when this call trained it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anydoor.presets as presets  # noqa: E402
import anydoor.training.loop as loop  # noqa: E402
from anydoor.training import train  # noqa: E402
from anydoor.training.base_unet import ensure_tiny_base  # noqa: E402
from anydoor.training.config import load_config  # noqa: E402
from eval.arm import load_arm_pipeline  # noqa: E402
from eval.runner import evaluate, evaluate_baseline  # noqa: E402
from eval.stats import compare, summarize  # noqa: E402

METRICS = ("psnr_mask", "ssim_mask")
# Parameter-name prefixes (of `set_trainable`'s names) of the detail extractor's zero convolutions.
ZERO_CONV_PREFIXES = ("controlnet.controlnet_", "controlnet.controlnet_cond_embedding.conv_out")
DETAIL_EXTRACTOR_PREFIXES = ("controlnet.",)


# --------------------------------------------------------------------------- patches
@contextlib.contextmanager
def lr_multiplier(prefixes: tuple[str, ...], multiplier: float) -> Iterator[None]:
    """Train the parameters whose names start with `prefixes` at `multiplier` x the lr."""
    names: dict[int, str] = {}
    real_set_trainable, real_adamw = loop.set_trainable, torch.optim.AdamW

    def set_trainable(*args, **kwargs):
        trainable = real_set_trainable(*args, **kwargs)
        names.update({id(p): n for n, p in trainable.items()})
        return trainable

    def adamw(params, lr, **kwargs):
        params = list(params)
        fast = [p for p in params if names.get(id(p), "").startswith(prefixes)]
        if not fast:
            raise RuntimeError(f"no trainable parameter starts with {prefixes}: the lr multiplier would do nothing")
        fast_ids = {id(p) for p in fast}
        slow = [p for p in params if id(p) not in fast_ids]
        return real_adamw([{"params": slow, "lr": lr}, {"params": fast, "lr": lr * multiplier}], lr=lr, **kwargs)

    with mock.patch.object(loop, "set_trainable", set_trainable), mock.patch.object(loop.torch.optim, "AdamW", adamw):
        yield


@contextlib.contextmanager
def hint_embedding_init() -> Iterator[None]:
    """Initialise the hint embedding's last conv like any conv (diffusers zero-initialises it)."""
    real = presets.build_detail_extractor

    def build(*args, **kwargs):
        controlnet = real(*args, **kwargs)
        conv = controlnet.controlnet_cond_embedding.conv_out
        torch.nn.init.kaiming_uniform_(conv.weight, a=5**0.5)  # nn.Conv2d's default init
        return controlnet

    with mock.patch.object(presets, "build_detail_extractor", build):
        yield


@contextlib.contextmanager
def zero_terminal_snr() -> Iterator[None]:
    """SD2.1's schedule rescaled to zero terminal SNR, DDIM with trailing spacing (Lin et al. 2024)."""
    real_ddim = presets.DDIMScheduler

    def ddim(**kwargs):
        return real_ddim(**{**kwargs, "timestep_spacing": "trailing"})  # trailing ignores steps_offset

    with mock.patch.dict(presets._SD21_SCHEDULE, {"rescale_betas_zero_snr": True}), \
            mock.patch.object(presets, "DDIMScheduler", ddim):
        yield


@contextlib.contextmanager
def x0_at_step(k: int) -> Iterator[None]:
    """A diagnostic sampler, not a method: DDIM runs as usual up to step `k`, then
    returns the x0 the model predicted there (k = 0: its estimate of the
    posterior mean from pure noise, the minimum-MSE answer a sampler trades for
    a sample)."""
    from diffusers import DDIMScheduler

    real_set, real_step = DDIMScheduler.set_timesteps, DDIMScheduler.step
    state: dict[int, list] = {}  # id(scheduler) -> [steps taken, x0 predicted at step k]

    def set_timesteps(self, *args, **kwargs):
        state[id(self)] = [0, None]
        return real_set(self, *args, **kwargs)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        out = real_step(self, model_output, timestep, sample, *args, **kwargs)
        counter = state.setdefault(id(self), [0, None])
        i, counter[0] = counter[0], counter[0] + 1
        if i == k:
            counter[1] = out[1] if isinstance(out, tuple) else out.pred_original_sample
        if i < k:
            return out
        x0 = counter[1]
        return (x0, x0) if isinstance(out, tuple) else type(out)(prev_sample=x0, pred_original_sample=x0)

    with mock.patch.object(DDIMScheduler, "set_timesteps", set_timesteps), \
            mock.patch.object(DDIMScheduler, "step", step):
        yield


# The warm start's recipe: `configs/train_tiny.yaml` with nothing of the reference
# (every sample gets the zero-image tokens, the sampler's unconditional input),
# the "none" collage (black in the box) and uniform timesteps, so that no arm of
# the ID-extractor, detail-map or timestep ablations is what it learned.
WARM_START_OVERRIDES = ("cond_dropout=1.0", "model.detail_map=none", "timestep_sampler=uniform")


@contextlib.contextmanager
def start_from(pipeline_dir: Path) -> Iterator[None]:
    """Start training from `pipeline_dir`'s UNet and detail extractor (the ID
    extractor, its projector and the VAE stay the config's)."""
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    real = loop._build_components
    warm = AnyDoorPipeline.from_pretrained(pipeline_dir)

    def build(config):
        components = real(config)
        for name in ("unet", "controlnet"):
            components[name].load_state_dict(getattr(warm, name).state_dict())
        return components

    with mock.patch.object(loop, "_build_components", build):
        yield


def warm_start(steps: int, out: Path) -> Path:
    """The warm start's pipeline folder (`WARM_START_OVERRIDES`, `steps` steps from
    the base UNet), trained into ``out/shared-warm-start-<steps>`` (not a variant's
    folder name) or reused."""
    return _train_into(out / f"shared-warm-start-{steps}", [f"max_steps={steps}", *WARM_START_OVERRIDES])


def _train_into(folder: Path, overrides: list[str]) -> Path:
    """Train `configs/train_tiny.yaml` plus `overrides` into `folder` unless its
    pipeline is already there; return the pipeline folder."""
    if not (folder / "pipeline" / "model_index.json").exists():
        overrides = [f'output_dir="{folder}"', "wandb_project=null", "sample_every=0", *overrides]
        train(load_config(str(ROOT / "configs/train_tiny.yaml"), overrides), resume="auto")
    return folder / "pipeline"


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    description: str
    overrides: tuple[str, ...] = ()  # `--set` overrides of configs/train_tiny.yaml
    patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
    model: str | None = None  # train nothing: evaluate this variant's model
    sampling: dict = field(default_factory=dict)  # evaluate() overrides
    sampling_patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()  # at evaluation only
    control_scale: float | None = None
    own_base_unet: bool = False  # pretrain the base UNet under the variant's patches too
    warm_start_steps: int = 0  # > 0: start from a shared warm start of this many steps (`warm_start`)


VARIANTS: dict[str, Variant] = {
    "demo": Variant("the demo's recipe (configs/train_tiny.yaml, 300 steps)"),
    "seed-1": Variant("training seed 1", ("seed=1",)),
    "untrained": Variant("0 steps", ("max_steps=0",)),
    "steps-900": Variant("900 steps (3x)", ("max_steps=900",)),
    "steps-1500": Variant("1500 steps (5x)", ("max_steps=1500",)),
    "lr-2e-3": Variant("lr 2e-3", ("learning_rate=0.002",)),
    "ema": Variant("EMA of the trained weights (diffusers' EMAModel, warm-up decay (1+t)/(10+t))", ("ema=true",)),
    "cosine": Variant("cosine lr decay to 0 over the 300 steps", ("lr_scheduler=cosine",)),
    "ema+cosine": Variant("EMA and cosine lr decay", ("ema=true", "lr_scheduler=cosine")),
    "zero-conv-lr-x10": Variant("zero convolutions' lr x10", patches=(lambda: lr_multiplier(ZERO_CONV_PREFIXES, 10.0),)),
    "detail-extractor-lr-x3": Variant(
        "whole detail extractor's lr x3", patches=(lambda: lr_multiplier(DETAIL_EXTRACTOR_PREFIXES, 3.0),)
    ),
    "hint-init": Variant("hint embedding's last conv not zero-initialised", patches=(hint_embedding_init,)),
    "hint-init+zero-conv-lr-x10": Variant(
        "hint-init and the zero convolutions' lr x10",
        patches=(hint_embedding_init, lambda: lr_multiplier(ZERO_CONV_PREFIXES, 10.0)),
    ),
    "zero-terminal-snr": Variant(
        "zero terminal SNR, trailing DDIM spacing, base UNet retrained with it",
        patches=(zero_terminal_snr,), own_base_unet=True,
    ),
    "zero-terminal-snr+hint-init": Variant(
        "zero terminal SNR and hint-init", patches=(zero_terminal_snr, hint_embedding_init), own_base_unet=True
    ),
    "cond-dropout-0.1": Variant("conditioning dropout 0.1 (the unconditional branch gets trained)", ("cond_dropout=0.1",)),
    "cond-dropout-0.1-guidance-2": Variant(
        "conditioning dropout 0.1's model at guidance 2", model="cond-dropout-0.1", sampling={"guidance_scale": 2.0}
    ),
    "steps-1500-guidance-2": Variant("1500 steps' model at guidance 2", model="steps-1500", sampling={"guidance_scale": 2.0}),
    "guidance-2": Variant("demo's model at guidance 2", model="demo", sampling={"guidance_scale": 2.0}),
    "ddim-10": Variant("demo's model, DDIM 10 steps", model="demo", sampling={"num_inference_steps": 10}),
    "control-scale-0": Variant("demo's model, detail extractor off at sampling", model="demo", control_scale=0.0),
    "shape-control": Variant(
        "demo's model, the mask channel is the target's silhouette", model="demo", sampling={"shape_control": True}
    ),
    "x0-step-0": Variant(
        "diagnostic: the demo model's x0 predicted at the first DDIM step (its posterior-mean estimate)",
        model="demo", sampling_patches=(lambda: x0_at_step(0),),
    ),
    "x0-step-10": Variant("diagnostic: the same at step 10 of 50", model="demo", sampling_patches=(lambda: x0_at_step(10),)),
    "x0-step-30": Variant("diagnostic: the same at step 30 of 50", model="demo", sampling_patches=(lambda: x0_at_step(30),)),
    "warm-start-600": Variant(
        "UNet and detail extractor from a 600-step warm start without the reference (WARM_START_OVERRIDES)",
        warm_start_steps=600,
    ),
    "warm-start-2000": Variant("the same from a 2000-step warm start", warm_start_steps=2000),
    "warm-start-2000-rgb": Variant(
        "the 2000-step warm start, the reference's pixels as the collage (Table 5's 'rgb')",
        ("model.detail_map=rgb",), warm_start_steps=2000,
    ),
    "warm-start-2000-shape-control": Variant(
        "warm-start-2000's model, the mask channel is the target's silhouette", model="warm-start-2000",
        sampling={"shape_control": True},
    ),
}


def _train(name: str, variant: Variant, out: Path) -> tuple[Path, float]:
    overrides = list(variant.overrides)
    if variant.own_base_unet:
        base = ensure_tiny_base(ROOT / "data/synthetic", ROOT / "outputs/vae", out / f"{name}_base_unet", progress=False)
        overrides.append(f'model.base_unet="{base}"')
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if variant.warm_start_steps and not (out / name / "pipeline" / "model_index.json").exists():
            stack.enter_context(start_from(warm_start(variant.warm_start_steps, out)))
        pipeline_dir = _train_into(out / name, overrides)
    return pipeline_dir, time.perf_counter() - start


def run_variant(name: str, out: Path, benchmark: Path, seeds: list[int], copy_paste) -> dict:
    variant = VARIANTS[name]
    source = VARIANTS[variant.model] if variant.model else variant
    with contextlib.ExitStack() as stack:
        for patch in source.patches:
            stack.enter_context(patch())
        pipeline_dir, train_s = _train(variant.model or name, source, out)
        pipe = load_arm_pipeline(pipeline_dir)
        if variant.control_scale is not None:
            pipe.register_to_config(control_scale=float(variant.control_scale))
        sampling = {"num_inference_steps": 50, "guidance_scale": 1.0, **variant.sampling}
        for patch in variant.sampling_patches:
            stack.enter_context(patch())
        rows = evaluate(pipe, benchmark, seeds=seeds, arm=name, metric_backbones="random", batch_size=8, progress=False,
                        **sampling)
    (out / name).mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / name / "results.csv", index=False)
    both = pd.concat([rows, copy_paste], ignore_index=True)
    means = summarize(rows, metrics=list(METRICS)).set_index("metric")
    diffs = compare(both, "copy_paste", metrics=list(METRICS)).set_index("metric")
    result = {"variant": name, "description": variant.description, "train_s": round(train_s, 1), **sampling,
              "control_scale": variant.control_scale}
    for metric in METRICS:
        result[metric] = [round(float(means.loc[metric, k]), 4) for k in ("mean", "ci_low", "ci_high")]
        result[f"{metric}_vs_copy_paste"] = [round(float(diffs.loc[metric, k]), 4)
                                             for k in ("mean_diff", "ci_low", "ci_high")]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="variant names (--list shows them)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/recipe_variants")
    parser.add_argument("--benchmark", type=Path, default=ROOT / "data/synthetic/benchmark")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    args.out, args.benchmark = args.out.resolve(), args.benchmark.resolve()  # before the chdir below
    if args.list or not args.variants:
        for name, variant in VARIANTS.items():
            print(f"{name:30s} {variant.description}")
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for needed in (args.benchmark, ROOT / "outputs/vae", ROOT / "outputs/base_unet"):
        if not needed.exists():
            parser.error(f"{needed} does not exist: run `make demo` (or its set-up steps) first")
    os.chdir(ROOT)  # configs/train_tiny.yaml's paths are relative to the repository root
    args.out.mkdir(parents=True, exist_ok=True)
    copy_paste = evaluate_baseline("copy_paste", args.benchmark, seeds=args.seeds, metric_backbones="random", progress=False)
    for name in args.variants:
        result = run_variant(name, args.out, args.benchmark, args.seeds, copy_paste)
        print(json.dumps(result), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
