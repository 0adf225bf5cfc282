"""The `anydoor` command line.

Each subcommand is a thin wrapper: argparse here, the work in the library
function it names. Heavy imports happen inside the handlers so that
`anydoor --help` stays fast. Errors a user can fix (bad paths, bad values)
are printed as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _synth_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth-data", help="write the synthetic data set (the embedded default)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--videos", type=int, default=24, help="training videos")
    p.add_argument("--frames", type=int, default=6, help="frames per video")
    p.add_argument("--size", type=int, default=96, help="frame size in pixels")
    p.add_argument("--images", type=int, default=None, help="single images with masks (default: as many as videos)")
    p.add_argument("--benchmark-pairs", type=int, default=16, help="evaluation pairs with true targets")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes")

    def run(args: argparse.Namespace) -> int:
        from anydoor.data.synthetic import write_synthetic_dataset

        summary = write_synthetic_dataset(
            args.out,
            videos=args.videos,
            frames=args.frames,
            size=args.size,
            images=args.images,
            benchmark_pairs=args.benchmark_pairs,
            seed=args.seed,
        )
        print(summary.describe())
        return 0

    p.set_defaults(handler=run)


def _convert_released(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-released",
        help="convert the released AnyDoor checkpoint to an AnyDoorPipeline folder",
        description="Convert the authors' released checkpoint (PyTorch Lightning .ckpt, LDM naming) to a folder "
        "that AnyDoorPipeline.from_pretrained loads, with a conversion.json record.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the released .ckpt (or a bare state dict file)")
    p.add_argument("--config", type=Path, default=None,
                   help="the authors' model YAML (configs/anydoor.yaml); default: the released SD2.1-base values")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")
    p.add_argument(
        "--trust-checkpoint", action="store_true",
        help="unpickle a checkpoint that holds Python objects; this can RUN CODE from the file: only for files "
        "from a source you trust (by default such files are refused, naming the objects)",
    )

    def run(args: argparse.Namespace) -> int:
        from anydoor.convert_released import convert_released_checkpoint

        out = convert_released_checkpoint(
            args.checkpoint, args.out, config=args.config, trust_checkpoint=args.trust_checkpoint
        )
        print(f"wrote {out} (AnyDoorPipeline.from_pretrained); record: {out / 'conversion.json'}")
        return 0

    p.set_defaults(handler=run)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a pipeline and the baselines on a benchmark (CLIP-I, DINO-I, PSNR/SSIM, diversity)",
        description="Generate every (pair, seed) of a benchmark with a saved AnyDoorPipeline, score it with the "
        "metrics of DESIGN.md section 2 next to the scene and copy-paste baselines, and write results.parquet "
        "(one row per pair and seed) and summary.csv (per arm, with bootstrap CIs) into --out.",
    )
    p.add_argument("--pipeline", type=Path, required=True, help="AnyDoorPipeline folder (save_pretrained layout)")
    p.add_argument("--benchmark", type=Path, required=True, help="benchmark folder with pairs.jsonl")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sample seeds (initial noise per pair and seed)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (released: 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (released: 5.0)")
    p.add_argument("--arm", default=None, help="arm name in the results (default: the pipeline folder's name)")
    p.add_argument("--train-seed", type=int, default=None, help="training seed of this pipeline, as a column")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (results do not depend on it)")
    p.add_argument("--device", default="cpu", help="torch device for the pipeline and the metric backbones")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model of CLIP-I (e.g. ViT-H-14)")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip tag (from the local cache) or weights file")
    p.add_argument("--dino-model", default="facebook/dino-vits16", help="DINO-I backbone: HF id or local folder")
    p.add_argument(
        "--random-backbones", action="store_true",
        help="use tiny random metric backbones (the embedded default's explicit opt-in): rows say "
        "calibrated=False and the numbers are never labelled CLIP-I / DINO-I",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the scene and copy-paste baselines")
    p.add_argument("--save-images", action="store_true", help="also save composites and scored regions to OUT/images/ARM/")

    def run(args: argparse.Namespace) -> int:
        import pandas as pd

        from anydoor.pipeline_anydoor import AnyDoorPipeline
        from eval.backbones import load_backbones
        from eval.runner import BASELINES, evaluate, evaluate_baseline, write_results

        if not args.pipeline.is_dir():
            raise FileNotFoundError(f"--pipeline {str(args.pipeline)!r} is not a folder (expected a save_pretrained layout)")
        backbones = load_backbones(
            args.clip_model, args.clip_pretrained, args.dino_model, random_weights=args.random_backbones
        ).to(args.device)
        pipeline = AnyDoorPipeline.from_pretrained(args.pipeline).to(args.device)
        arm = args.arm or args.pipeline.resolve().name
        images = (lambda name: args.out / "images" / name) if args.save_images else (lambda name: None)
        common = dict(backbones=backbones, random_backbones=args.random_backbones)
        frames = [evaluate(
            pipeline, args.benchmark, args.seeds, args.steps, args.guidance, arm=arm, batch_size=args.batch_size,
            save_images=images(arm), extra_columns=None if args.train_seed is None else {"train_seed": args.train_seed},
            **common,
        )]
        if not args.no_baselines:
            frames += [evaluate_baseline(b, args.benchmark, args.seeds, save_images=images(b), **common) for b in BASELINES]
        results, summary = write_results(pd.concat(frames, ignore_index=True), args.out)
        print(f"wrote {results} and {summary}")
        return 0

    p.set_defaults(handler=run)


COMMANDS = [_synth_data, _convert_released, _evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anydoor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        # Errors raised on purpose by the library carry the argument and the
        # value; show them as a message, not as a traceback.
        print(f"anydoor {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
