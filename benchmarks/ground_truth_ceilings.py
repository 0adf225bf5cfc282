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
- ``copy_paste_best_turn`` (cheats): the reference turned by the angle (5-degree
  grid) that scores best against the target, then copy-pasted: what knowing
  the target pose is worth.
- ``target_mean_fill`` (cheats): the mask filled with the target's own mean colour.
- ``target_resized`` (cheats): the true target's crop (the pipeline's crop
  geometry, `prepare_inference_inputs`) resized to S px and pasted back: the
  resolution ceiling.
- ``target_through_vae`` (cheats, with --vae): that crop encoded and decoded by
  the VAE: the ceiling of any latent diffusion model using that VAE.

    python benchmarks/ground_truth_ceilings.py --benchmark data/synthetic/benchmark [--vae outputs/vae]

Prints a table (mean and bootstrap 95% CI over pairs, `eval.stats.summarize`)
and writes it to --out (markdown) when given.
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
from anydoor.data.pairs import PairConfig, crop_as_generated, paste_back, prepare_inference_inputs  # noqa: E402
from anydoor.presets import TINY_IMAGE_SIZE  # noqa: E402
from eval.crops import copy_paste  # noqa: E402
from eval.metrics import image_to_tensor, masked_psnr, masked_ssim  # noqa: E402
from eval.stats import summarize  # noqa: E402

BLUR_SIGMAS = (1.5, 3.0)
TURN_STEP_DEG = 5


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


def _best_turn(item: dict, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    image, obj = item["object_image"], item["object_mask"]
    ys, xs = np.nonzero(obj)
    centre = (float(xs.mean()), float(ys.mean()))
    size = image.shape[1::-1]
    best, best_psnr = None, -np.inf
    for angle in range(0, 360, TURN_STEP_DEG):
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        turned = cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        turned_mask = cv2.warpAffine(obj.astype(np.uint8), m, size, flags=cv2.INTER_NEAREST) > 0
        if not turned_mask.any():
            continue
        composite = copy_paste(turned, turned_mask, item["scene_image"], mask)
        psnr = _score(composite, target, mask)["psnr_mask"]
        if psnr > best_psnr:
            best, best_psnr = composite, psnr
    return best


def _target_crop(item: dict, config: PairConfig):
    """The true target's crop in the pipeline's geometry: (uint8 SxSx3, PasteInfo)."""
    sample = prepare_inference_inputs(
        item["object_image"], item["object_mask"], item["scene_image"], scene_mask=item["scene_mask"], config=config
    )
    return crop_as_generated(item["target_image"], sample.paste, config.image_size), sample.paste


@torch.no_grad()
def _through_vae(vae, crop: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(crop).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].clamp(-1, 1)
    return ((recon.permute(1, 2, 0) + 1.0) * 127.5).round().byte().numpy()


def ceilings(benchmark: str | Path, vae_dir: str | Path | None = None, image_size: int = TINY_IMAGE_SIZE) -> pd.DataFrame:
    """One row per (pair, method) with psnr_mask and ssim_mask."""
    data = BenchmarkSet(benchmark)
    if not data.has_targets:
        raise ValueError(f"benchmark {str(benchmark)!r} has pairs without a true target: nothing to compare with")
    vae = None
    if vae_dir is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    config = PairConfig(image_size=image_size)
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
        methods["copy_paste_best_turn (cheats)"] = _best_turn(item, target, mask)
        methods["target_mean_fill (cheats)"] = _fill(scene, mask, target[mask].mean(0))
        crop, paste = _target_crop(item, config)
        methods[f"target_resized_{image_size}px (cheats)"] = paste_back(crop, scene, paste)
        if vae is not None:
            methods["target_through_vae (cheats)"] = paste_back(_through_vae(vae, crop), scene, paste)
        for name, composite in methods.items():
            rows.append({"pair_id": item["pair_id"], "arm": name, **_score(composite, target, mask)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, type=Path, help="benchmark folder with pairs.jsonl and true targets")
    parser.add_argument("--vae", type=Path, default=None, help="VAE folder (diffusers AutoencoderKL) for the VAE ceiling")
    parser.add_argument("--image-size", type=int, default=TINY_IMAGE_SIZE, help="the model's crop side S")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    args = parser.parse_args(argv)
    rows = ceilings(args.benchmark, args.vae, args.image_size)
    text = format_table(rows)
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


if __name__ == "__main__":
    main()
