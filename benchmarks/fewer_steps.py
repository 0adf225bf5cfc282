"""How few DPM-Solver++(2M) / UniPC steps keep the metrics within DDIM 50's 95% CI (issues 10 and 27).

Evaluates one trained pipeline on a benchmark with true targets through the
evaluation runner (`eval.runner.evaluate`, common random numbers: every arm
sees the same pairs, crops and initial noise): DDIM 50 (the released
sampler, the reference) and each (scheduler, steps). With ``--metric-backbones
world`` (the default) the in-world DINO-I and CLIP-I are read besides PSNR and
SSIM inside the true object mask (issue 27: the demo may sample with fewer
steps where it stays within DDIM 50's CI on these); with ``random`` only the
ground-truth metrics (issue 10's measurement: random backbones give no CLIP-I).

Per arm: the mean with its bootstrap 95% CI over pairs (`eval.stats.summarize`),
whether the mean lies inside DDIM 50's 95% CI, and the paired difference to
DDIM 50 with its CI and Holm-adjusted sign-flip p-value (`eval.stats.compare`).
Per scheduler: the fewest tested steps from which every larger tested count
stays inside DDIM 50's CI on both metrics (the issue's criterion), and the
same for the stricter paired one (no significant difference after Holm).

    python benchmarks/fewer_steps.py --benchmark data/synthetic/benchmark --seeds 0 1 \\
        [--pipeline outputs/sweeps/demo/trained/<key>/pipeline] --out outputs/fewer_steps

Without --pipeline, the full method's model of the demo sweep is used
(outputs/sweeps/demo/trained/*/ whose config.yaml trained DINOv2 tokens with
the HF map, background removal and ATS). Writes results.csv (every row) and
fewer_steps.md (the tables) into --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
GROUND_TRUTH = ("psnr_mask", "ssim_mask")
IN_WORLD = ("dino_i", "clip_i", "psnr_mask", "ssim_mask")
REFERENCE = "ddim-50"
SCHEDULER_NAMES = ("dpm++2m", "unipc")


def find_full_method_pipeline(sweep_dir: Path) -> Path:
    """The demo sweep's trained full method (DINOv2, HF map, background
    removed, ATS, no conditioning dropout, trained for > 0 steps)."""
    candidates = []
    for config_file in sorted(sweep_dir.glob("trained/*/config.yaml")):
        config = yaml.safe_load(config_file.read_text()) or {}
        model = config.get("model", {})
        if (
            (config_file.parent / "pipeline" / "model_index.json").is_file()
            and config.get("max_steps", 0) > 0
            and model.get("id_extractor") == "dinov2"
            and model.get("detail_map") == "hf"
            and model.get("remove_background") is True
            and config.get("timestep_sampler") == "ats"
            and not config.get("cond_dropout")
        ):
            candidates.append(config_file.parent / "pipeline")
    if not candidates:
        raise FileNotFoundError(
            f"no trained full-method pipeline under {sweep_dir}/trained/ (run `make demo` first) : pass --pipeline"
        )
    return candidates[0]


def make_scheduler(name: str, config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    classes = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    return classes[name].from_config(config)  # DPMSolverMultistepScheduler's defaults: DPM-Solver++, order 2


def fewest_steps(table: pd.DataFrame, scheduler: str, steps: list[int], column: str,
                 metrics=GROUND_TRUTH) -> int | None:
    """The smallest tested count n such that every tested count >= n passes
    `column` (a boolean per arm and metric) on every metric; None if even the
    largest does not."""
    best = None
    for n in sorted(steps, reverse=True):
        rows = table[table["arm"] == f"{scheduler}-{n}"]
        if len(rows) != len(metrics) or not rows[column].astype(bool).all():
            break
        best = n
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=None, help="a trained AnyDoorPipeline folder")
    parser.add_argument("--sweep-dir", type=Path, default=ROOT / "outputs" / "sweeps" / "demo",
                        help="where to look for the full method's model when --pipeline is not given")
    parser.add_argument("--benchmark", type=Path, default=ROOT / "data" / "synthetic" / "benchmark",
                        help="a BenchmarkSet folder with true targets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sample seeds")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20, 25], help="step counts to test")
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULER_NAMES), choices=SCHEDULER_NAMES)
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (released: 5.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "fewer_steps", help="output folder")
    parser.add_argument("--metric-backbones", default="world", choices=("world", "random"),
                        help="world: in-world DINO-I / CLIP-I as well; random: PSNR / SSIM only")
    args = parser.parse_args(argv)
    metrics = list(IN_WORLD if args.metric_backbones == "world" else GROUND_TRUTH)
    if any(n < 1 for n in args.steps):
        raise SystemExit(f"--steps must be positive integers, got {args.steps}")

    from anydoor import AnyDoorPipeline
    from eval.backbones import load_backbones
    from eval.runner import evaluate
    from eval.stats import compare, summarize

    pipeline_dir = args.pipeline or find_full_method_pipeline(args.sweep_dir)
    pipe = AnyDoorPipeline.from_pretrained(pipeline_dir).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    backbones = load_backbones(metric_backbones=args.metric_backbones).to(args.device)
    base_config = pipe.scheduler.config

    arms = [("ddim", 50)] + [(s, n) for s in args.schedulers for n in sorted(args.steps)]
    frames = []
    for scheduler, steps in arms:
        pipe.scheduler = make_scheduler(scheduler, base_config)
        start = time.perf_counter()
        frame = evaluate(pipe, args.benchmark, args.seeds, steps, args.guidance, arm=f"{scheduler}-{steps}",
                         backbones=backbones, metric_backbones=args.metric_backbones, batch_size=args.batch_size,
                         progress=False)
        frames.append(frame.assign(scheduler=scheduler))
        print(f"{scheduler}-{steps}: {len(frame)} images in {time.perf_counter() - start:.1f} s", flush=True)
    results = pd.concat(frames, ignore_index=True)

    summary = summarize(results, by="arm", metrics=metrics)
    reference = summary[summary["arm"] == REFERENCE].set_index("metric")
    summary["within_ddim50_ci"] = [
        reference.loc[m, "ci_low"] <= mean <= reference.loc[m, "ci_high"]
        for m, mean in zip(summary["metric"], summary["mean"])
    ]
    paired = compare(results, REFERENCE, metrics=metrics)
    speed = results.groupby("arm")["gen_seconds"].mean().rename("gen_seconds_per_image")

    args.out.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out / "results.csv", index=False)
    order = {f"{s}-{n}": i for i, (s, n) in enumerate(arms)}
    table = summary.merge(paired[["arm", "metric", "mean_diff", "ci_low", "ci_high", "p_holm"]].rename(
        columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"}), on=["arm", "metric"], how="left")
    table["not_different"] = ~table["p_holm"].fillna(1.0).lt(0.05)
    table = table.join(speed, on="arm").sort_values(
        ["metric", "arm"], key=lambda column: column.map(order) if column.name == "arm" else column
    )
    lines = [
        f"# Fewer sampling steps vs DDIM 50 (pipeline {pipeline_dir}, benchmark {args.benchmark}, "
        f"{results['pair_id'].nunique()} pairs x seeds {args.seeds}, guidance {args.guidance})",
        "",
        "| arm | metric | mean | 95% CI | inside DDIM 50's CI | paired diff vs DDIM 50 [95% CI] | p (Holm) | s/image |",
        "|---|---|---:|---|---|---|---:|---:|",
    ]
    for r in table.itertuples():
        diff = "" if r.arm == REFERENCE else f"{r.mean_diff:+.4f} [{r.diff_ci_low:+.4f}, {r.diff_ci_high:+.4f}]"
        p = "" if r.arm == REFERENCE else f"{r.p_holm:.3f}"
        lines.append(f"| {r.arm} | {r.metric} | {r.mean:.4f} | [{r.ci_low:.4f}, {r.ci_high:.4f}] | "
                     f"{'yes' if r.within_ddim50_ci else 'no'} | {diff} | {p} | {r.gen_seconds_per_image:.3f} |")
    lines += ["", "Fewest tested steps from which every larger tested count stays close to DDIM 50 on "
              + ", ".join(metrics) + ":", ""]
    for scheduler in args.schedulers:
        within = fewest_steps(table, scheduler, args.steps, "within_ddim50_ci", metrics)
        paired_ok = fewest_steps(table, scheduler, args.steps, "not_different", metrics)
        none = "none of " + str(sorted(args.steps))
        lines.append(f"- {scheduler}: mean inside DDIM 50's 95% CI from {within if within is not None else none} "
                     f"steps; no significant paired difference (Holm, 5%) from "
                     f"{paired_ok if paired_ok is not None else none} steps")
    text = "\n".join(lines) + "\n"
    (args.out / "fewer_steps.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
