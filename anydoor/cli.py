"""The `anydoor` command line.

Each subcommand is a thin wrapper: argparse here, the work in the library
function it names. Heavy imports happen inside the handlers so that
`anydoor --help` stays fast. Errors a user can fix (bad paths, bad values)
are printed as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
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
        "--metric-backbones", choices=("real", "world", "random"), default=None,
        help="CLIP-I / DINO-I backbones: real (downloaded weights, --clip-model/--dino-model), world (the embedded "
        "world's shipped ones: 'CLIP-I (in-world)') or random (random init: similarities, never CLIP-I); default: "
        "world for a tiny-preset pipeline, real otherwise",
    )
    p.add_argument("--random-backbones", action="store_true", help="the older spelling of --metric-backbones random")
    p.add_argument("--no-baselines", action="store_true", help="skip the scene and copy-paste baselines")
    p.add_argument("--save-images", action="store_true", help="also save composites and scored regions to OUT/images/ARM/")
    p.add_argument(
        "--shape-control", action="store_true",
        help="shape-controlled insertion: the mask channel is each pair's placement mask, not its box",
    )

    def run(args: argparse.Namespace) -> int:
        import pandas as pd

        from anydoor.pipeline_anydoor import AnyDoorPipeline
        from eval.backbones import load_backbones
        from eval.runner import BASELINES, default_metric_backbones, evaluate, evaluate_baseline, resolve_metric_backbones, write_results

        if not args.pipeline.is_dir():
            raise FileNotFoundError(f"--pipeline {str(args.pipeline)!r} is not a folder (expected a save_pretrained layout)")
        pipeline = AnyDoorPipeline.from_pretrained(args.pipeline).to(args.device)
        metric_backbones = resolve_metric_backbones(args.metric_backbones, args.random_backbones, default_metric_backbones(pipeline))
        backbones = load_backbones(
            args.clip_model, args.clip_pretrained, args.dino_model, metric_backbones=metric_backbones
        ).to(args.device)
        arm = args.arm or args.pipeline.resolve().name
        images = (lambda name: args.out / "images" / name) if args.save_images else (lambda name: None)
        common = dict(backbones=backbones, metric_backbones=metric_backbones)
        frames = [evaluate(
            pipeline, args.benchmark, args.seeds, args.steps, args.guidance, arm=arm, batch_size=args.batch_size,
            save_images=images(arm), extra_columns=None if args.train_seed is None else {"train_seed": args.train_seed},
            shape_control=args.shape_control, **common,
        )]
        if not args.no_baselines:
            frames += [evaluate_baseline(b, args.benchmark, args.seeds, save_images=images(b), **common) for b in BASELINES]
        results, summary = write_results(pd.concat(frames, ignore_index=True), args.out)
        print(f"wrote {results} and {summary}")
        return 0

    p.set_defaults(handler=run)


def _compose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compose", help="put an object into a scene with a pipeline folder")
    p.add_argument("--pipeline", type=Path, default=None,
                   help="AnyDoorPipeline folder (trained or converted); default: AnyDoor-world, the embedded "
                   "world's shipped model (hash-checked)")
    p.add_argument("--object", required=True, type=Path, help="object image (an RGBA's alpha > 128 is its mask)")
    p.add_argument(
        "--object-mask", type=Path, default=None,
        help="object mask file (needed for RGB objects): L, RGB or RGBA (in: a colour channel > 128) or palette "
        "(in: index != 0), PNG or JPEG; all set = the whole image is the object",
    )
    p.add_argument("--scene", required=True, type=Path, help="scene image")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--scene-mask", type=Path,
        help="where the object goes: a mask file, read like --object-mask (its box places the object)",
    )
    where.add_argument("--box", help="where the object goes: x0,y0,x1,y1 in scene pixels")
    p.add_argument("--out", required=True, type=Path, help="output composite (PNG)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (released: 50)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: 1.0 for AnyDoor-world, trained without conditioning dropout; "
                   "the released 5.0 for a --pipeline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")

    def run(args: argparse.Namespace) -> int:
        import PIL.Image
        import torch

        from anydoor import AnyDoorPipeline
        from anydoor.data.images import as_rgb_uint8, load_mask_file, load_rgba_object

        for name in ("pipeline", "object", "scene", "object_mask", "scene_mask"):
            path = getattr(args, name)
            if path is not None and not path.exists():
                raise FileNotFoundError(f"--{name.replace('_', '-')} {str(path)!r} does not exist")
        box = None
        if args.box is not None:
            try:
                box = tuple(int(v) for v in args.box.split(","))
            except ValueError:
                box = ()
            if len(box) != 4:
                raise ValueError(f"--box must be four integers x0,y0,x1,y1, got {args.box!r}")
        # Files are read here, by the library's one rule for mask files, so errors name the file.
        if args.object_mask is None:
            try:
                obj, object_mask = load_rgba_object(args.object)
            except ValueError as err:
                raise ValueError(f"{err} (--object without --object-mask needs an alpha channel)") from None
        else:
            with PIL.Image.open(args.object) as image:
                obj = as_rgb_uint8(image, name=f"--object {str(args.object)!r}")
            object_mask = load_mask_file(args.object_mask, role="object", shape=obj.shape[:2])
        with PIL.Image.open(args.scene) as image:
            scene = as_rgb_uint8(image, name=f"--scene {str(args.scene)!r}")
        scene_mask = None
        if args.scene_mask is not None:
            scene_mask = load_mask_file(args.scene_mask, role="scene", shape=scene.shape[:2])
        if args.pipeline is None:
            from anydoor.presets import ANYDOOR_WORLD_GUIDANCE, anydoor_world

            pipe = anydoor_world().to(args.device)
            guidance = ANYDOOR_WORLD_GUIDANCE if args.guidance is None else args.guidance
        else:
            pipe = AnyDoorPipeline.from_pretrained(args.pipeline).to(args.device)
            guidance = 5.0 if args.guidance is None else args.guidance
        out = pipe(
            object_image=obj,
            object_mask=object_mask,
            scene_image=scene,
            scene_mask=scene_mask,
            scene_box=box,
            num_inference_steps=args.steps,
            guidance_scale=guidance,
            generator=torch.Generator(args.device).manual_seed(args.seed),
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out.images[0].save(args.out)
        print(f"wrote {args.out}")
        return 0

    p.set_defaults(handler=run)


def _sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run an ablation sweep (papermill per run, resumable)")
    p.add_argument("spec", type=Path, help="sweep spec (YAML, see sweeps/)")
    p.add_argument("--sweep-dir", type=Path, default=None, help="output folder (default outputs/sweeps/<name>)")
    p.add_argument("--jobs", type=int, default=1, help="runs executed in parallel")
    p.add_argument("--only", default=None, help="run one ablation of the spec")
    p.add_argument("--run-id", default=None, help="run one run of the spec by id (what `wandb agent` calls)")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would execute")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    p.add_argument("--timeout", type=int, default=None, help="seconds per run (default: the spec's timeout_s)")
    p.add_argument("--wandb-sweep", type=Path, default=None, metavar="FILE",
                   help="write a W&B sweep config (grid over run ids) to FILE instead of running")

    def run(args: argparse.Namespace) -> int:
        import yaml

        from eval.sweeps import SweepSpec, run_sweep, wandb_sweep_config

        sweep_dir = args.sweep_dir or Path("outputs/sweeps") / SweepSpec.load(args.spec).name
        if args.wandb_sweep is not None:
            args.wandb_sweep.write_text(yaml.safe_dump(wandb_sweep_config(args.spec, sweep_dir), sort_keys=False))
            print(f"wrote {args.wandb_sweep}: `wandb sweep {args.wandb_sweep}`, then `wandb agent <sweep id>` on each machine")
            return 0
        result = run_sweep(
            args.spec, sweep_dir, jobs=args.jobs, only=args.only, run_ids=[args.run_id] if args.run_id else None,
            dry_run=args.dry_run, retry_failed=args.retry_failed, timeout_s=args.timeout,
        )
        print(result.describe())
        return 1 if result.counts()["failed"] else 0

    p.set_defaults(handler=run)


def _demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: every ablation on the embedded default, then the report")
    p.add_argument("--jobs", type=int, default=1, help="sweep runs executed in parallel")

    def run(args: argparse.Namespace) -> int:
        from eval.demo import run_demo

        run_demo(jobs=args.jobs)
        return 0

    p.set_defaults(handler=run)


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train AnyDoor from a YAML config (Accelerate: CPU, GPU, `accelerate launch`)")
    p.add_argument("--config", type=Path, required=True, help="training config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, YAML value), e.g. --set max_steps=20 --set data.0.weight=2")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue from the latest complete checkpoint in output_dir, or in PATH (a run or checkpoint "
                        "folder); 'auto' starts fresh when there is none")

    def run(args: argparse.Namespace) -> int:
        from anydoor.training.loop import NonFiniteLossError, train

        try:
            result = train(args.config, resume=args.resume, overrides=args.overrides)
        except NonFiniteLossError as err:
            print(f"anydoor train: error: {err}", file=sys.stderr)
            return 1
        print(f"trained {result.step} steps; pipeline in {result.pipeline_dir}")
        return 0

    p.set_defaults(handler=run)


def _train_vae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-vae", help="train the embedded default's tiny VAE on the synthetic images (cached)")
    p.add_argument("--data", type=Path, required=True, help="synthetic data set (`anydoor synth-data`)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reused when its cache key matches)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default: VAETrainSettings.steps)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step (default: VAETrainSettings.batch_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, crops and posterior samples")
    p.add_argument("--force", action="store_true", help="train even when a matching VAE is cached in --out")

    def run(args: argparse.Namespace) -> int:
        import json

        from anydoor.training.vae import META_FILE, ensure_tiny_vae, train_vae

        given = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        settings = {k: v for k, v in given.items() if v is not None}
        if args.force:
            train_vae(args.data, args.out, **settings)
        else:
            ensure_tiny_vae(args.data, args.out, **settings)
        meta = json.loads((args.out / META_FILE).read_text())
        print(
            f"tiny VAE in {args.out}: held-out PSNR {meta['psnr_held_out']:.2f} dB "
            f"(untrained {meta['psnr_untrained']:.2f} dB), scaling_factor {meta['scaling_factor']:.4f}, "
            f"trained in {meta['train_seconds']:.0f} s"
        )
        return 0

    p.set_defaults(handler=run)


def _report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="render a sweep's report (HTML + Markdown: tables with CIs, plots, sample grids)",
        description="Render reports/<sweep>/index.html and report.md from a sweep's run folders alone (no W&B "
        "server): per ablation the table with 95% CIs, the paired differences against the full method "
        "(Holm-corrected), bar charts, loss curves and a sample grid; then print a short summary.",
    )
    p.add_argument("sweep_dir", type=Path, help="the sweep folder (holds sweep.json)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default reports/<sweep name>/)")

    def run(args: argparse.Namespace) -> int:
        from eval.report import render_report, summary_text

        print(render_report(args.sweep_dir, args.out))
        print(summary_text(args.sweep_dir))
        return 0

    p.set_defaults(handler=run)


def _train_base(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-base", help="pretrain the tiny UNet every embedded-default arm starts from")
    p.add_argument("--data", required=True, type=Path, help="synthetic data set (`anydoor synth-data`)")
    p.add_argument("--vae", required=True, type=Path, help="the trained tiny VAE (`anydoor train-vae`)")
    p.add_argument("--out", required=True, type=Path, help="output folder (reused when its cache key matches)")
    p.add_argument("--steps", type=int, default=None, help="AdamW steps (default: BaseTrainSettings.steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, crops, timesteps and noise")

    def run(args: argparse.Namespace) -> int:
        from anydoor.training.base_unet import ensure_tiny_base

        settings = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
        out = ensure_tiny_base(args.data, args.vae, args.out, **settings)
        print(f"tiny base UNet in {out}: {(out / 'base_meta.json').read_text().strip()}")
        return 0

    p.set_defaults(handler=run)


def _pretrain_world(sub: argparse._SubParsersAction) -> None:
    from anydoor.world import STAGE_NAMES

    p = sub.add_parser(
        "pretrain-world",
        help="train the embedded world's pretrained models (ID backbones, metric backbones) and calibrate them",
        description="Train, in stages, the embedded world's counterparts of the real recipe's pretrained models on "
        "the synthetic world's pretraining split, write them with a manifest (sha256, command, commit, seeds, times, "
        "calibration) into --out, and print the calibration table. A rerun redoes only the stages whose inputs "
        "(code, settings, seeds, the stages they read) changed. To ship: --out anydoor/world.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (anydoor/world ships with the package)")
    p.add_argument("--only", nargs="+", choices=STAGE_NAMES, default=None, metavar="STAGE",
                   help=f"run only these stages ({', '.join(STAGE_NAMES)})")
    p.add_argument("--work", type=Path, default=Path("outputs/world-work"), help="scratch folder (calibration set)")

    def run(args: argparse.Namespace) -> int:
        from anydoor.world.pretrain import pretrain_world
        from eval.calibration import format_calibration

        only = "" if not args.only else " --only " + " ".join(args.only)
        manifest = pretrain_world(args.out, only=args.only, work=args.work,
                                  command=f"anydoor pretrain-world --out {args.out}{only}")
        for name, record in manifest["stages"].items():
            print(f"  {name}: {record['seconds']:.0f} s")
        if manifest.get("calibration"):
            print(format_calibration(manifest["calibration"]))
        return 0

    p.set_defaults(handler=run)


def _world_sample(sub) -> None:
    p = sub.add_parser(
        "world-sample",
        help="samples of the embedded world's caption-conditioned base model (SD2.1's stand-in) from a caption",
        description="Draw --n samples of the shipped world base UNet + VAE for CAPTION (DDIM 50, classifier-free "
        "guidance against the empty caption) and write them as one grid image. Captions use the world's words: "
        "shapes (ellipse, rounded rectangle, polygon, blob), colour families, textures (striped, checkered, dotted, "
        "lettered, patchy), backgrounds (gradient, noisy, striped, cluttered, white).",
    )
    p.add_argument("caption", help='e.g. "a green striped ellipse with a red marker on a noisy background"')
    p.add_argument("--out", type=Path, required=True, help="grid image to write (.png)")
    p.add_argument("--n", type=int, default=8, help="samples (default 8)")
    p.add_argument("--columns", type=int, default=4, help="grid columns (default 4)")
    p.add_argument("--size", type=int, default=64, help="sample side in pixels, a multiple of 8 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--scale", type=int, default=2, help="pixel repeat of each sample in the grid (default 2)")

    def run(args: argparse.Namespace) -> int:
        import PIL.Image

        from anydoor.data.captions import caption_vocabulary
        from anydoor.world.text_to_image import check_size, image_grid, load_text_to_image, sample_captions

        check_size(args.size)
        for name in ("n", "columns", "steps", "scale"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
        unknown = sorted({w for w in re.findall(r"\w+|[^\w\s]+", args.caption.lower())} - set(caption_vocabulary()))
        if unknown:
            print(f"anydoor world-sample: warning: words outside the world's vocabulary (read as [UNK]): {unknown}",
                  file=sys.stderr)
        pipe, encoder = load_text_to_image()
        images = sample_captions(pipe, encoder, [args.caption] * args.n, seed=args.seed, guidance_scale=args.guidance,
                                 num_inference_steps=args.steps, size=args.size)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image_grid(images, min(args.columns, args.n), args.scale)).save(args.out)
        print(f"wrote {args.out} ({args.n} samples of {args.size} px)")
        return 0

    p.set_defaults(handler=run)


COMMANDS = [_synth_data, _pretrain_world, _world_sample, _train_vae, _train_base, _train, _compose, _evaluate, _sweep, _report, _demo, _convert_released]


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
