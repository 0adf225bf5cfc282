"""AnyDoor-world after training (issue 28): its training curve and a sample grid.

    python benchmarks/anydoor_world.py curve [--run outputs/world-work/anydoor_world-run] [--every 1000]
    python benchmarks/anydoor_world.py grid  [--pairs 8] [--out docs/anydoor_world/grid.png]

``curve`` scores the stage's checkpoints (kept in the work folder, outside git) on the demo's
benchmark (16 pairs, sample seed 0, DDIM 50, guidance 1.0 as the demo's arms) with the in-world
metric backbones: DINO-I, CLIP-I, retrieval top-1, PSNR in the mask, seam, and G (DINO-I): the
share of the gap between the untrained model (0) and the world VAE with perfect latents (1,
`eval.fidelity_ladder`) each checkpoint closes. Also the held-out diffusion loss over a pair pool
drawn with another seed (`benchmarks/pair_pool.py`). Writes ``curve.csv``, ``curve.md`` and
``curve.png`` into ``--out`` (default docs/anydoor_world/); the x axis is training samples seen,
with the demo's arms' budget (300 steps x batch 8) marked.

``grid`` draws benchmark pairs: reference, scene, AnyDoor-world at two seeds, the true target,
128 px per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_SAMPLES = 300 * 8  # the demo's arms: 300 steps of batch 8
BENCHMARK = ROOT / "data" / "synthetic" / "benchmark"
OUT = ROOT / "docs" / "anydoor_world"
HELDOUT_SEED = 12_345
HELDOUT_PAIRS = 256


def _untrained(config, folder: Path) -> Path:
    """The untrained model of the same preset and base (max_steps 0), as the demo's `untrained` row."""
    from anydoor.training import train

    return train(dataclasses.replace(config, max_steps=0, output_dir=str(folder), pair_pool=None)).pipeline_dir


def curve(run: Path, every: int, out: Path, benchmark: Path) -> pd.DataFrame:
    import torch

    from anydoor import AnyDoorPipeline, world
    from anydoor.training.config import load_config
    from anydoor.training.loop import _build_dataset, pool_loss
    from anydoor.training.pair_pool import prepare_pool
    from eval.backbones import load_backbones
    from eval.fidelity_ladder import LADDER_ROWS, fidelity_ladder
    from eval.runner import evaluate
    from eval.stats import gap_closed

    config = load_config(run / "config.yaml")
    backbones = load_backbones(metric_backbones="world")
    ladder = fidelity_ladder(benchmark, world.load_vae(), backbones)
    ceiling = ladder[ladder["arm"] == LADDER_ROWS[-1]]
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    chosen = [c for c in checkpoints if int(c.name.split("-")[1]) % every == 0 or c == checkpoints[-1]]
    with tempfile.TemporaryDirectory() as tmp:
        entries = [(0, _untrained(config, Path(tmp) / "untrained"))]
        entries += [(int(c.name.split("-")[1]), c / "pipeline") for c in chosen]
        held = None
        rows, frames = [], {}
        for step, folder in entries:
            pipe = AnyDoorPipeline.from_pretrained(folder, torch_dtype=torch.float32)
            if held is None:
                heldout_config = dataclasses.replace(config, seed=HELDOUT_SEED)
                held = prepare_pool(_build_dataset(heldout_config, 64), HELDOUT_PAIRS, pipe.vae, pipe.id_extractor,
                                    progress=False)
            frame = evaluate(pipe, benchmark, [0], 50, 1.0, arm=f"step-{step}", backbones=backbones,
                             metric_backbones="world", batch_size=8, progress=False)
            frames[step] = frame
            gap = gap_closed(frame, frames[0], ceiling)
            rows.append({"step": step, "samples": step * config.batch_size, "heldout_loss": pool_loss(pipe, held),
                         **{m: frame[m].mean() for m in ("dino_i", "clip_i", "retrieved", "psnr_mask", "seam")},
                         "G": gap["G"], "G_low": gap["ci_low"], "G_high": gap["ci_high"]})
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    ceiling_row = {m: ceiling[m].mean() for m in ("dino_i", "clip_i", "retrieved", "psnr_mask")}
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "curve.csv", index=False)
    lines = [f"AnyDoor-world's checkpoints on {benchmark} ({table.shape[0]} points; sample seed 0, DDIM 50, "
             "guidance 1.0; in-world metric backbones). Ladder row (c), the VAE with perfect latents: "
             + ", ".join(f"{k} {v:.2f}" for k, v in ceiling_row.items()) + ".", "",
             "| step | samples | held-out loss | DINO-I | CLIP-I | retrieval top-1 | PSNR mask | seam | G (DINO-I) [95% CI] |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.step} | {r.samples} | {r.heldout_loss:.4f} | {r.dino_i:.2f} | {r.clip_i:.2f} | "
                     f"{r.retrieved:.2f} | {r.psnr_mask:.2f} | {r.seam:.2f} | {r.G:.2f} [{r.G_low:.2f}, {r.G_high:.2f}] |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    _plot(table, ceiling_row, out / "curve.png")
    print("\n".join(lines))
    return table


def _plot(table: pd.DataFrame, ceiling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("dino_i", "DINO-I (in-world)"), ("clip_i", "CLIP-I (in-world)"), ("retrieved", "retrieval top-1"),
              ("psnr_mask", "PSNR in mask (dB)"), ("heldout_loss", "held-out loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.8), dpi=110)
    x = table["samples"].clip(lower=1)
    for ax, (column, title) in zip(axes, panels):
        ax.plot(x, table[column], marker="o", ms=3)
        if column in ceiling:
            ax.axhline(ceiling[column], color="grey", ls="--", lw=1, label="VAE, perfect latents")
        ax.axvline(DEMO_SAMPLES, color="tab:red", ls=":", lw=1, label="demo arms' budget")
        ax.set_xlim(left=-0.02 * x.max())
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("training samples", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def grid(pairs: int, out: Path, benchmark: Path) -> None:
    import torch

    from anydoor.data.datasets import BenchmarkSet
    from anydoor.presets import anydoor_world
    from eval.crops import generated_region
    from eval.plots import sample_grid

    pipe = anydoor_world()
    pipe.set_progress_bar_config(disable=True)
    data = BenchmarkSet(benchmark)
    figures = []
    for i in range(min(pairs, len(data))):
        item = data[i]
        out_images = pipe(item["object_image"], item["object_mask"], item["scene_image"], scene_mask=item["scene_mask"],
                          num_inference_steps=50, guidance_scale=1.0, num_images_per_prompt=2,
                          generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images
        columns = [("reference", item["object_image"]), ("scene", generated_region(item["scene_image"], item["scene_mask"], remove_background=False))]
        columns += [(f"seed {s}", generated_region(np.asarray(im), item["scene_mask"], remove_background=False))
                    for s, im in zip((0, 1), out_images)]
        columns.append(("true target", generated_region(item["target_image"], item["scene_mask"], remove_background=False)))
        figures.append(columns)
    _stack(figures, out)


def _stack(rows: list, path: Path) -> None:
    import PIL.Image

    cell = 128
    images = []
    for columns in rows:
        images.append(np.concatenate([np.asarray(PIL.Image.fromarray(np.asarray(img)).convert("RGB").resize((cell, cell)))
                                      for _, img in columns], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.concatenate(images, axis=0)).save(path)
    print(f"wrote {path}: columns {', '.join(name for name, _ in rows[0])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("curve")
    p.add_argument("--run", type=Path, default=ROOT / "outputs" / "world-work" / "anydoor_world-run")
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--benchmark", type=Path, default=BENCHMARK)
    p.add_argument("--out", type=Path, default=OUT)
    p = sub.add_parser("grid")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--benchmark", type=Path, default=BENCHMARK)
    p.add_argument("--out", type=Path, default=OUT / "grid.png")
    args = parser.parse_args()
    if args.command == "curve":
        curve(args.run, args.every, args.out, args.benchmark)
    else:
        grid(args.pairs, args.out, args.benchmark)


if __name__ == "__main__":
    main()
