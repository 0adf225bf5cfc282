"""Seconds per evaluated pair on the embedded default: generation and metrics separately.

Writes a synthetic benchmark to a temporary folder, builds the tiny pipeline
(untrained unless --pipeline names a saved one: the speed is the same) and
the random metric backbones (the embedded default's opt-in), runs
`eval.runner.evaluate` and the two baselines, and prints the per-image
generation and metric times the runner records, plus the one-off costs
(backbone construction). Not a test: numbers depend on the machine.

    python benchmarks/bench_eval.py --pairs 8 --seeds 0 1 --steps 50
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="benchmark pairs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sample seeds")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (released: 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (released: 5.0)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--size", type=int, default=96, help="synthetic scene side in pixels")
    parser.add_argument("--pipeline", type=Path, default=None, help="a saved AnyDoorPipeline (default: tiny_pipeline)")
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args()

    from anydoor.data.datasets import BenchmarkSet
    from anydoor.data.synthetic import write_synthetic_dataset
    from anydoor.pipeline_anydoor import AnyDoorPipeline
    from anydoor.presets import tiny_pipeline
    from eval.backbones import load_backbones
    from eval.runner import BASELINES, evaluate, evaluate_baseline

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, videos=1, frames=2, size=args.size, benchmark_pairs=args.pairs, seed=0)
        benchmark = BenchmarkSet(Path(tmp) / "benchmark")
        pipe = tiny_pipeline(seed=0) if args.pipeline is None else AnyDoorPipeline.from_pretrained(args.pipeline)
        pipe = pipe.to(args.device)
        start = time.perf_counter()
        backbones = load_backbones(metric_backbones="random").to(args.device)
        backbone_seconds = time.perf_counter() - start

        # Warm-up (allocator, kernels, file cache): every pair at one step, one seed; not counted.
        evaluate(pipe, benchmark, [args.seeds[0]], 1, args.guidance,
                 backbones=backbones, metric_backbones="random", batch_size=1, progress=False)
        start = time.perf_counter()
        df = evaluate(pipe, benchmark, args.seeds, args.steps, args.guidance, backbones=backbones,
                      metric_backbones="random", batch_size=args.batch_size, progress=False)
        wall = time.perf_counter() - start
        baselines = {b: evaluate_baseline(b, benchmark, args.seeds, backbones=backbones, metric_backbones="random",
                                          progress=False) for b in BASELINES}

    images = len(df)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"embedded default on {args.device} ({device}, torch threads {torch.get_num_threads()}): "
          f"{args.pairs} pairs x {len(args.seeds)} seeds, {args.size} px scenes, {args.steps} steps, "
          f"guidance {args.guidance}, batch {args.batch_size}")
    print(f"  metric backbones built once:  {backbone_seconds:.2f} s")
    print(f"  generation per image:         {df.gen_seconds.mean():.3f} s")
    print(f"  metrics per image:            {df.metric_seconds.mean():.4f} s (CLIP + DINO + PSNR/SSIM; diversity per pair not timed)")
    print(f"  per pair ({len(args.seeds)} seeds), wall:     {wall / args.pairs:.3f} s")
    for name, frame in baselines.items():
        print(f"  baseline {name:<10} per image: {frame.gen_seconds.mean() + frame.metric_seconds.mean():.4f} s")
    print(f"  ({images} images in {wall:.1f} s)")


if __name__ == "__main__":
    main()
