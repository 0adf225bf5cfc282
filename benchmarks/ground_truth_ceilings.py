"""What the ground-truth metrics inside the object mask can say on a benchmark (issue 8).

PSNR and SSIM inside the true object mask (`eval.metrics.masked_psnr` /
`masked_ssim`) compare a sample with one true target. Where the inputs do not
determine the target (the synthetic benchmark turns each reference by 30-150
degrees against its target), a sharp sample in the wrong pose scores no better
than pasting the reference, while a blur of the right colours scores higher.
This script puts numbers on that, with no model: reference methods that need
no training, and two that cheat (they read the true target), as ceilings.

- ``scene``, ``copy_paste``: the runner's baselines (`eval.crops.copy_paste`).
- ``copy_paste_blur_S``: copy-paste, Gaussian-blurred with sigma S px inside the mask.
- ``reference_mean_fill``: the mask filled with the reference object's mean colour.
- ``ideal_shape_control_sample``: the reference turned so that its pasted
  silhouette best overlaps the placement mask (IoU, 5-degree grid), then
  copy-pasted: what a model that reads the pose from a shape-control mask
  (the benchmark's placement masks are the targets' silhouettes) and knows
  the object exactly would paste. Reads the inputs only.
- ``copy_paste_best_turn`` (cheats): the reference turned by the angle (5-degree
  grid) that scores best against the target, then copy-pasted: what knowing
  the target pose is worth.
- ``ideal_box_only_sample``: what a sampler that knows the object exactly
  would score on average when, like any sampler given only a box, it does
  not know the turn: the reference turned by fresh draws of a turn law,
  copy-pasted (mean over 64 draws per pair; the lighting stays the
  reference's, as copy-paste's does). Two laws: the benchmark's own (what a
  model that had learned the benchmark's pose change would sample) and the
  training videos' (what a perfect model of the training pairs would).
- ``target_mean_fill`` (cheats): the mask filled with the target's own mean colour.
- ``target_resized`` (cheats): the true target's crop (the pipeline's crop
  geometry, `prepare_inference_inputs`) resized to S px and pasted back: the
  resolution ceiling.
- ``target_through_vae`` (cheats, with --vae): that crop encoded and decoded by
  the VAE: the ceiling of any latent diffusion model using that VAE.

    python benchmarks/ground_truth_ceilings.py --benchmark data/synthetic/benchmark [--vae outputs/vae]

Prints a table (mean and bootstrap 95% CI over pairs, `eval.stats.summarize`)
and the ideal samplers' paired differences against the scene and copy-paste
(`eval.stats.compare`), and writes both to --out (markdown) when given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anydoor.data.datasets import BenchmarkSet  # noqa: E402
from anydoor.data.pairs import PairConfig, paste_back  # noqa: E402
from anydoor.data.synthetic import BENCHMARK_TURN, VIDEO_TURN  # noqa: E402
from anydoor.presets import TINY_IMAGE_SIZE  # noqa: E402
from eval.crops import copy_paste  # noqa: E402
from eval.demo import SYNTH_SETTINGS  # noqa: E402
from eval.fidelity_ladder import target_crop, through_vae  # noqa: E402
from eval.metrics import image_to_tensor, masked_psnr, masked_ssim  # noqa: E402
from eval.stats import compare, summarize  # noqa: E402

BLUR_SIGMAS = (1.5, 3.0)
TURN_STEP_DEG = 5
IDEAL_DRAWS = 64  # turns drawn per pair for the ideal box-only sample
VIDEO_FRAMES = SYNTH_SETTINGS["frames"]  # frames per synthetic training video, as the demo writes them


def _score(composite: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    m = torch.from_numpy(mask)[None]
    return {
        "psnr_mask": float(masked_psnr(image_to_tensor(composite), image_to_tensor(target), m)[0]),
        "ssim_mask": float(masked_ssim(image_to_tensor(composite), image_to_tensor(target), m)[0]),
    }


def _fill(scene: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = scene.copy()
    out[mask] = np.round(colour).astype(np.uint8)
    return out


def _turn(item: dict, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference image and mask turned by `angle` degrees (counter-clockwise,
    about the mask's centroid)."""
    image, obj = item["object_image"], item["object_mask"]
    ys, xs = np.nonzero(obj)
    m = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.mean())), angle, 1.0)
    size = image.shape[1::-1]
    turned = cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return turned, cv2.warpAffine(obj.astype(np.uint8), m, size, flags=cv2.INTER_NEAREST) > 0


def _turned_paste(item: dict, angle: float, placement: np.ndarray) -> np.ndarray | None:
    """The reference turned by `angle` degrees and copy-pasted into
    `placement`'s box; None when the turn leaves no mask."""
    turned, turned_mask = _turn(item, angle)
    if not turned_mask.any():
        return None
    return copy_paste(turned, turned_mask, item["scene_image"], placement)


def _silhouette_turn(item: dict, placement: np.ndarray) -> np.ndarray:
    """Copy-paste of the reference turned by the angle (5-degree grid) whose
    pasted silhouette overlaps `placement` best (IoU): what a sampler that
    reads the pose from a shape-control mask, and knows the object exactly,
    would paste. It reads the inputs only (in shape-control mode the
    placement mask is the silhouette), not the target's pixels."""
    best, best_iou = None, -1.0
    blank = np.zeros_like(item["scene_image"])
    for angle in range(0, 360, TURN_STEP_DEG):
        turned, turned_mask = _turn(item, angle)
        if not turned_mask.any():
            continue
        # copy_paste's own geometry, on a white object over a black scene, gives the pasted silhouette.
        pasted = copy_paste(np.full_like(turned, 255), turned_mask, blank, placement)[..., 0] > 0
        iou = (pasted & placement).sum() / (pasted | placement).sum()
        if iou > best_iou:
            best, best_iou = _turned_paste(item, angle, placement), iou
    return best


def _best_turn(item: dict, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    best, best_psnr = None, -np.inf
    for angle in range(0, 360, TURN_STEP_DEG):
        composite = _turned_paste(item, angle, mask)
        if composite is None:
            continue
        psnr = _score(composite, target, mask)["psnr_mask"]
        if psnr > best_psnr:
            best, best_psnr = composite, psnr
    return best


def _benchmark_turn(rng: np.random.Generator) -> float:
    """A draw from the benchmark's own turn law (`_write_benchmark`)."""
    return rng.uniform(*BENCHMARK_TURN) * (1 if rng.random() < 0.5 else -1)


def _training_video_turn(rng: np.random.Generator) -> float:
    """A draw from the turn law of the synthetic training videos' frame pairs:
    a trajectory turns by U(-VIDEO_TURN, VIDEO_TURN) degrees over its frames (`_trajectory`),
    and a pair is two frames at least one apart (`VideoPairDataset`'s
    defaults: uniform over the first frame, then over the second)."""
    total = rng.uniform(-VIDEO_TURN, VIDEO_TURN)
    positions = np.arange(VIDEO_FRAMES)
    a = int(rng.choice(positions))
    b = int(rng.choice(positions[positions != a]))
    return total * (b - a) / (VIDEO_FRAMES - 1)


TURN_LAWS = {"benchmark's turns": _benchmark_turn, "training videos' turns": _training_video_turn}


def _ideal_box_only_sample(item: dict, target: np.ndarray, mask: np.ndarray, rng: np.random.Generator, draw_turn) -> dict:
    """Expected scores of a sampler that knows the object exactly but, like any
    sampler given only a box, not its turn: the reference turned by fresh
    draws of `draw_turn(rng)` degrees, copy-pasted; mean over `IDEAL_DRAWS`
    draws."""
    scores = []
    while len(scores) < IDEAL_DRAWS:
        composite = _turned_paste(item, draw_turn(rng), mask)
        if composite is not None:
            scores.append(_score(composite, target, mask))
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def ceilings(
    benchmark: str | Path, vae_dir: str | Path | None = None, image_size: int = TINY_IMAGE_SIZE, seed: int = 0
) -> pd.DataFrame:
    """One row per (pair, method) with psnr_mask and ssim_mask; `seed` seeds
    the ideal box-only sample's turns."""
    data = BenchmarkSet(benchmark)
    if not data.has_targets:
        raise ValueError(f"benchmark {str(benchmark)!r} has pairs without a true target: nothing to compare with")
    vae = None
    if vae_dir is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    config = PairConfig(image_size=image_size)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(len(data)):
        item = data[i]
        target, mask, scene = item["target_image"], item["target_mask"], item["scene_image"]
        pasted = copy_paste(item["object_image"], item["object_mask"], scene, mask)
        methods = {"scene": scene, "copy_paste": pasted}
        for sigma in BLUR_SIGMAS:
            blurred = scene.copy()
            blurred[mask] = cv2.GaussianBlur(pasted, (0, 0), sigma)[mask]
            methods[f"copy_paste_blur_{sigma:g}"] = blurred
        methods["reference_mean_fill"] = _fill(scene, mask, item["object_image"][item["object_mask"]].mean(0))
        methods["ideal_shape_control_sample"] = _silhouette_turn(item, mask)
        methods["copy_paste_best_turn (cheats)"] = _best_turn(item, target, mask)
        methods["target_mean_fill (cheats)"] = _fill(scene, mask, target[mask].mean(0))
        crop, paste = target_crop(item, config)
        methods[f"target_resized_{image_size}px (cheats)"] = paste_back(crop, scene, paste)
        if vae is not None:
            methods["target_through_vae (cheats)"] = paste_back(through_vae(vae, crop), scene, paste)
        for name, composite in methods.items():
            rows.append({"pair_id": item["pair_id"], "arm": name, **_score(composite, target, mask)})
        for law, draw_turn in TURN_LAWS.items():
            ideal = _ideal_box_only_sample(item, target, mask, rng, draw_turn)
            rows.append({"pair_id": item["pair_id"], "arm": f"ideal_box_only_sample, {law}", **ideal})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, type=Path, help="benchmark folder with pairs.jsonl and true targets")
    parser.add_argument("--vae", type=Path, default=None, help="VAE folder (diffusers AutoencoderKL) for the VAE ceiling")
    parser.add_argument("--image-size", type=int, default=TINY_IMAGE_SIZE, help="the model's crop side S")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ideal box-only sample's turns")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    args = parser.parse_args(argv)
    rows = ceilings(args.benchmark, args.vae, args.image_size, seed=args.seed)
    text = format_table(rows) + "\n\n" + format_ideal_comparisons(rows)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def format_table(rows: pd.DataFrame) -> str:
    """Markdown table: a line per method (in the order computed), mean [95% CI] per metric."""
    stats = summarize(rows, by="arm", metrics=["psnr_mask", "ssim_mask"])
    cell = {(r.arm, r.metric): f"{r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in stats.itertuples()}
    lines = [f"| method (n = {rows['pair_id'].nunique()} pairs) | PSNR in mask (dB) | SSIM in mask |", "|---|---|---|"]
    for arm in dict.fromkeys(rows["arm"]):
        lines.append(f"| {arm} | {cell[(arm, 'psnr_mask')]} | {cell[(arm, 'ssim_mask')]} |")
    return "\n".join(lines)


def format_ideal_comparisons(rows: pd.DataFrame, baselines: tuple[str, ...] = ("copy_paste", "scene")) -> str:
    """Markdown table: each ideal sampler minus each baseline, paired over pairs
    (`eval.stats.compare`, Holm across the ideal samplers per baseline and metric)."""
    ideal = [arm for arm in dict.fromkeys(rows["arm"]) if arm.startswith("ideal_")]
    paired = rows.assign(seed=0)  # one deterministic row per (pair, method)
    lines = ["| ideal sample | baseline | PSNR difference [95% CI] (p Holm) | SSIM difference [95% CI] (p Holm) |",
             "|---|---|---|---|"]
    for baseline in baselines:
        diffs = compare(paired[paired["arm"].isin([baseline, *ideal])], baseline, metrics=["psnr_mask", "ssim_mask"])
        cell = {(r.arm, r.metric): f"{r.mean_diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r.p_holm:.2g})"
                for r in diffs.itertuples()}
        for arm in ideal:
            lines.append(f"| {arm} | {baseline} | {cell[(arm, 'psnr_mask')]} | {cell[(arm, 'ssim_mask')]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
