"""Calibration of the embedded world's backbones: what their embeddings can tell apart.

The in-world CLIP-I / DINO-I and the ID backbones are trained by the project
(`anydoor pretrain-world`); before a report may call a number "DINO-I
(in-world)", the backbone behind it must be shown to carry instance identity
across the changes the benchmark makes. On a calibration set the world
generator makes (`CALIBRATION_OBJECTS` objects never trained on, each as a
reference and as a target turned by 30-150 degrees under other lighting,
exactly as the benchmark's pairs are made):

- **instance retrieval**: the target's object crop (background removed with
  its true mask) retrieves its own reference among all of them; top-1 and
  top-5 with bootstrap CIs, and the paired difference against the backbone's
  random-init floor (the same network at its initial weights);
- **zero-shot attribute accuracy** of the CLIP-like models from caption
  prompts (colour family, shape, texture);
- **metric sanity**: the similarity of (true target, its reference) against
  (another object's target, that reference), and against (the true target
  blurred with sigma 3, its reference), paired over the objects.

Embeddings in, numbers out; `calibration_crops` reads the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import cv2
import numpy as np
import torch

from eval.crops import reference_region, square_tensor
from eval.stats import bootstrap_ci

CALIBRATION_OBJECTS = 256
BLUR_SIGMA = 3.0
TOP_K = (1, 5)


def write_calibration_set(out: str | PathLike, seed: int | None = None, objects: int = CALIBRATION_OBJECTS) -> Path:
    """The calibration set in the benchmark's layout (`BenchmarkSet`): `objects` pairs of unseen
    objects from the world generator at root entropy `seed` (default `CALIBRATION_SEED`). Returns its root."""
    from anydoor.data.synthetic import write_synthetic_dataset
    from anydoor.data.world_views import CALIBRATION_SEED

    # One video is the writer's minimum; only the benchmark split is used.
    written = write_synthetic_dataset(out, videos=1, images=0, benchmark_pairs=objects,
                                      seed=CALIBRATION_SEED if seed is None else seed)
    return written.benchmark_root


@dataclass
class CalibrationCrops:
    """Background-removed object crops of a calibration set, uint8 (h, w, 3) each."""

    pair_ids: list[str]
    references: list[np.ndarray]
    targets: list[np.ndarray]
    blurred_targets: list[np.ndarray]  # the target image blurred (sigma `BLUR_SIGMA`) before the crop
    attributes: list[dict]  # the objects' generator attributes (shape, colour, texture, marker)


def calibration_crops(root: str | PathLike) -> CalibrationCrops:
    """Read a calibration set written by `write_calibration_set`."""
    from anydoor.data.datasets import BenchmarkSet

    benchmark = BenchmarkSet(root)
    manifest = json.loads((Path(root).parent / "manifest.json").read_text())
    object_of = {key: ids[0] for key, ids in manifest["splits"]["benchmark"].items()}
    crops = CalibrationCrops([], [], [], [], [])
    for i in range(len(benchmark)):
        item = benchmark[i]
        target = item["target_image"]
        blurred = cv2.GaussianBlur(target, (0, 0), sigmaX=BLUR_SIGMA)
        crops.pair_ids.append(item["pair_id"])
        crops.references.append(reference_region(item["object_image"], item["object_mask"]))
        crops.targets.append(reference_region(target, item["target_mask"]))
        crops.blurred_targets.append(reference_region(blurred, item["target_mask"]))
        crops.attributes.append(manifest["objects"][str(object_of[item["pair_id"]])])
    return crops


@torch.no_grad()
def embed(embedder, regions: list[np.ndarray], batch_size: int = 64) -> torch.Tensor:
    """(N, D) L2-normalised embeddings of crops through an `eval.backbones.ImageEmbedder`."""
    out = []
    for start in range(0, len(regions), batch_size):
        batch = torch.stack([square_tensor(r, embedder.image_size) for r in regions[start : start + batch_size]])
        out.append(embedder(batch))
    return torch.cat(out)


def retrieval_ranks(queries: torch.Tensor, keys: torch.Tensor) -> np.ndarray:
    """For each query i, the rank (0 = first) of key i among all keys by cosine similarity.
    Ties count against the query (a constant embedding ranks last, not first)."""
    if queries.shape != keys.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must have the same shape")
    sims = queries.float() @ keys.float().T
    own = sims.diagonal().unsqueeze(1)
    others = sims >= own
    others.fill_diagonal_(False)
    return others.sum(dim=1).numpy()


def _mean_ci(values: np.ndarray, seed: int) -> dict:
    low, high = bootstrap_ci(values, rng=seed)
    return {"mean": float(np.mean(values)), "ci": [low, high]}


def retrieval_scores(ranks: np.ndarray, floor_ranks: np.ndarray | None = None, seed: int = 0) -> dict:
    """Top-k accuracy (k in `TOP_K`) with bootstrap CIs over queries; with `floor_ranks`, the
    paired difference against the floor (same queries) too."""
    scores = {}
    for k in TOP_K:
        hits = (ranks < k).astype(np.float64)
        scores[f"top{k}"] = _mean_ci(hits, seed)
        if floor_ranks is not None:
            scores[f"top{k}_minus_floor"] = _mean_ci(hits - (floor_ranks < k), seed)
    return scores


def sanity(embedder, crops: CalibrationCrops, seed: int = 0) -> dict:
    """Similarity x100 of (true target, reference) against (another object's target, reference) and
    (blurred true target, reference), paired over objects. The other object is a fixed-seed derangement.

    Also the mean similarity of a reference to the targets of the *other objects of its colour family*
    (where the attributes name one): what a composite of the right colour but the wrong instance
    would score, the level between "another object" and "the true target" an arm must clear to show
    instance identity rather than colour.
    """
    refs = embed(embedder, crops.references)
    targets = embed(embedder, crops.targets)
    true = (targets * refs).sum(1).numpy() * 100.0
    blurred = (embed(embedder, crops.blurred_targets) * refs).sum(1).numpy() * 100.0
    other = derangement(len(refs), np.random.default_rng(seed))
    wrong = (targets[other] * refs).sum(1).numpy() * 100.0
    result = {
        "true_target": _mean_ci(true, seed),
        "other_object": _mean_ci(wrong, seed),
        "blurred_target": _mean_ci(blurred, seed),
        "true_minus_other": _mean_ci(true - wrong, seed),
        "true_minus_blurred": _mean_ci(true - blurred, seed),
    }
    families = np.array([a.get("colour") for a in crops.attributes], dtype=object)
    similarity = (targets @ refs.T).numpy() * 100.0  # [target j, reference i]
    same = (families[:, None] == families[None, :]) & ~np.eye(len(refs), dtype=bool) & (families[:, None] != None)  # noqa: E711
    has = same.any(axis=0)
    if has.any():
        same_family = (similarity * same).sum(axis=0)[has] / same.sum(axis=0)[has]
        result["same_family_other"] = _mean_ci(same_family, seed)
        result["true_minus_same_family"] = _mean_ci(true[has] - same_family, seed)
    return result


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with no fixed point (n >= 2), drawn with `rng`."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


@torch.no_grad()
def zero_shot_accuracy(clip_model, tokenizer, image_size: int, crops: CalibrationCrops, mean, std) -> dict:
    """Accuracy of a CLIP-like model naming each reference's colour family, shape and texture from
    caption prompts (`anydoor.data.captions.zero_shot_prompts`), with the chance level."""
    from anydoor.data.captions import zero_shot_prompts

    images = torch.stack([square_tensor(r, image_size) for r in crops.references])
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    image_features = torch.nn.functional.normalize(clip_model.encode_image(images), dim=-1)
    result = {}
    for attribute in ("colour", "shape", "texture"):
        prompts = zero_shot_prompts(attribute)
        values = list(prompts)
        text_features = torch.nn.functional.normalize(clip_model.encode_text(tokenizer(list(prompts.values()))), dim=-1)
        predicted = (image_features @ text_features.T).argmax(dim=1).numpy()
        truth = np.array([values.index(a[attribute]) for a in crops.attributes])
        result[attribute] = {"accuracy": float((predicted == truth).mean()), "chance": 1.0 / len(values)}
    return result


# --------------------------------------------------------------------------- the world's backbones

# Display names of the calibrated backbones (the manifest's keys).
BACKBONE_NAMES = {
    "dinov2": "DINOv2-like ID backbone (the dinov2 arms)",
    "clip": "CLIP-like ID backbone (the clip arm)",
    "metric_dino": "DINO-I metric backbone",
    "metric_clip": "CLIP-I metric backbone",
}


def world_embedders(root, settings: dict, clip=None) -> dict:
    """{name: (trained embedder, random-init floor)} for the four world backbones in `root`.

    Each floor is the same network at the weights its training started from
    (same shape, same init seed), built from the stage's `settings`. `clip`: the
    world CLIP if already loaded (`anydoor.world.load_clip`).
    """
    from anydoor.training.world_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, build_model, model_config
    from anydoor.training.world_dino import IMAGENET_MEAN, IMAGENET_STD, build_backbone
    from anydoor.world import load_clip, load_dinov2
    from eval.backbones import ImageEmbedder, load_world_backbones

    if clip is None:
        clip, _ = load_clip(root)
    metric = load_world_backbones(root)
    s = settings
    clip_floor = build_model(model_config(s["clip"]), s["clip"].seed).visual
    metric_clip_floor = build_model(model_config(s["metric_clip"]), s["metric_clip"].seed).visual
    clip_size = s["clip"].vision["image_size"]
    dinov2 = load_dinov2(root)
    return {
        "dinov2": (
            ImageEmbedder(dinov2, "dino", "world-dinov2", dinov2.config.image_size, IMAGENET_MEAN, IMAGENET_STD, "in-world"),
            ImageEmbedder(build_backbone(s["dinov2"], s["dinov2"].seed), "dino", "random-init world-dinov2",
                          dinov2.config.image_size, IMAGENET_MEAN, IMAGENET_STD, "random"),
        ),
        "clip": (
            ImageEmbedder(clip.visual, "clip", "world-clip", clip_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "in-world"),
            ImageEmbedder(clip_floor, "clip", "random-init world-clip", clip_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                          "random"),
        ),
        "metric_dino": (
            metric.dino,
            ImageEmbedder(build_backbone(s["metric_dino"], s["metric_dino"].seed), "dino", "random-init world-dino-i",
                          metric.dino.image_size, IMAGENET_MEAN, IMAGENET_STD, "random"),
        ),
        "metric_clip": (
            metric.clip,
            ImageEmbedder(metric_clip_floor, "clip", "random-init world-clip-i", metric.clip.image_size,
                          OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "random"),
        ),
    }


def calibrate_world(root, crops: CalibrationCrops, settings: dict, seed: int = 0) -> dict:
    """The calibration table of the world backbones in `root` (stored in its manifest)."""
    from anydoor.training.world_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from anydoor.world import load_clip, load_manifest

    clip, tokenizer = load_clip(root)
    embedders = world_embedders(root, settings, clip)
    retrieval, ranks = {}, {}
    for name, (trained, floor) in embedders.items():
        ranks[name] = retrieval_ranks(embed(trained, crops.targets), embed(trained, crops.references))
        floor_ranks = retrieval_ranks(embed(floor, crops.targets), embed(floor, crops.references))
        retrieval[name] = {
            "backbone": trained.name, "input_size": trained.image_size,
            **retrieval_scores(ranks[name], floor_ranks, seed),
            "floor": retrieval_scores(floor_ranks, seed=seed),
        }
    clip_size = settings["clip"].vision["image_size"]
    zero_shot = {
        "clip": zero_shot_accuracy(clip, tokenizer, clip_size, crops, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        "metric_clip": load_manifest(root)["stages"]["metric_clip"]["log"]["zero_shot"],
    }
    dinov2_vs_clip = {
        f"top{k}": _mean_ci((ranks["dinov2"] < k).astype(float) - (ranks["clip"] < k), seed) for k in TOP_K
    }
    return {
        "objects": len(crops.references),
        "retrieval": retrieval,
        "dinov2_minus_clip": dinov2_vs_clip,
        "zero_shot": zero_shot,
        "sanity": {name: sanity(embedders[name][0], crops, seed) for name in ("metric_clip", "metric_dino")},
    }


def _fmt(entry: dict, digits: int = 2, signed: bool = False) -> str:
    sign = "+" if signed else ""
    low, high = entry["ci"]
    return f"{entry['mean']:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def retrieval_frame(calibration: dict):
    """The retrieval table: one row per backbone and one per random-init floor."""
    import pandas as pd

    rows = []
    for name, r in calibration["retrieval"].items():
        label = BACKBONE_NAMES.get(name, name)
        rows.append({"backbone": label, "input": f"{r['input_size']} px", "top-1": _fmt(r["top1"]),
                     "top-5": _fmt(r["top5"]), "top-1 minus floor": _fmt(r["top1_minus_floor"], signed=True)})
        rows.append({"backbone": f"{label}: random-init floor", "input": f"{r['input_size']} px",
                     "top-1": _fmt(r["floor"]["top1"]), "top-5": _fmt(r["floor"]["top5"]), "top-1 minus floor": ""})
    return pd.DataFrame(rows)


def sanity_frame(calibration: dict):
    """The metric-sanity table: similarity x100 of the true target, another object and the blurred target."""
    import pandas as pd

    rows = []
    for name, s in calibration["sanity"].items():
        rows.append({"metric backbone": BACKBONE_NAMES.get(name, name), "true target": _fmt(s["true_target"], 1),
                     "other object": _fmt(s["other_object"], 1), "true minus other": _fmt(s["true_minus_other"], 1, True),
                     "other object, same colour family": _fmt(s["same_family_other"], 1) if "same_family_other" in s else "",
                     "blurred target": _fmt(s["blurred_target"], 1),
                     "true minus blurred": _fmt(s["true_minus_blurred"], 1, True)})
    return pd.DataFrame(rows)


def zero_shot_frame(calibration: dict):
    """Zero-shot attribute accuracy of the two CLIP-like models, with chance."""
    import pandas as pd

    rows = []
    for name, result in calibration["zero_shot"].items():
        row = {"model": BACKBONE_NAMES.get(name, name)}
        for attribute, r in result.items():
            row[attribute] = f"{r['accuracy']:.2f} (chance {r['chance']:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_bars(calibration: dict) -> list[tuple[str, bool, str]]:
    """The issue's bars as (what, met, evidence): every trained backbone above its floor on top-1
    (paired CI excludes 0), in-world DINO-I / CLIP-I of the true target above another object's."""
    bars = []
    for name, r in calibration["retrieval"].items():
        d = r["top1_minus_floor"]
        bars.append((f"{BACKBONE_NAMES.get(name, name)}: top-1 above its random-init floor", d["ci"][0] > 0,
                     _fmt(d, signed=True)))
    for name, s in calibration["sanity"].items():
        d = s["true_minus_other"]
        bars.append((f"{BACKBONE_NAMES.get(name, name)}: true target above another object", d["ci"][0] > 0,
                     _fmt(d, 1, True)))
    return bars


def format_calibration(calibration: dict) -> str:
    """The calibration as plain text (what `anydoor pretrain-world` prints)."""
    from eval.report import markdown_table

    lines = [f"Calibration on {calibration['objects']} unseen objects (targets turned 30-150 degrees, other lighting)",
             "", "Instance retrieval (target crop -> its reference among all):",
             markdown_table(retrieval_frame(calibration), index=False),
             "", "DINOv2-like minus CLIP-like ID backbone, top-1: " + _fmt(calibration["dinov2_minus_clip"]["top1"], signed=True),
             "", "Zero-shot attribute accuracy:", markdown_table(zero_shot_frame(calibration), index=False),
             "", "Metric sanity (similarity x100 to the reference):", markdown_table(sanity_frame(calibration), index=False),
             "", "Bars:"]
    lines += [f"- [{'met' if met else 'NOT met'}] {what}: {evidence}" for what, met, evidence in calibration_bars(calibration)]
    return "\n".join(lines)
