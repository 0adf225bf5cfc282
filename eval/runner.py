"""The benchmark runner: one row per (pair, sample seed) with every metric.

Common random numbers (DESIGN.md section 2): every arm sees the same pairs,
the same crops and the same initial noise, drawn from a generator seeded by
``stable_seed(pair_id, seed)``; so arm differences are paired, and a pair's
image does not depend on the batch it was generated in. The non-learned
baselines (DESIGN.md section 2: the unchanged scene, and the reference
pasted into the box) go through the same code, so every table has them.

Per row: ``pair_id``, ``seed``, ``arm``, the pipeline's configuration
(``detail_map``, ``id_extractor``, ``remove_background``, ``steps``,
``guidance``, ``shape_control``, ``wrong_reference``; None for baselines), ``clip_i``, ``dino_i`` (x100),
``psnr_mask``, ``ssim_mask`` (NaN without a true target), ``seam`` (`eval.seam`: how much the
composite changes the scene around the box, 0-255, lower is better), ``retrieved`` (1.0 when
the pair's own reference is the nearest, by the DINO-I backbone, of all the benchmark's references:
instance retrieval top-1), ``diversity``
(per pair: the mean pairwise 1 - SSIM of the generated boxes across the
seeds, repeated in each row of that pair; NaN with one seed),
``metric_source`` ("real", "in-world" or "random": where the CLIP/DINO backbones
come from), ``clip_backbone``, ``dino_backbone``, ``gen_seconds`` and
``metric_seconds`` (per row: the batch's time divided by its rows), and
any ``extra_columns`` (e.g. ``train_seed``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import torch
from tqdm.auto import tqdm

from anydoor.data.datasets import BenchmarkSet
from eval.backbones import METRIC_BACKBONES, ImageEmbedder, MetricBackbones, check_metric_backbones, load_backbones
from eval.crops import copy_paste, generated_region, reference_region, square_tensor
from eval.seam import seam_error
from eval.metrics import diversity, embed_similarity, image_to_tensor, masked_psnr, masked_ssim
from eval.stats import stable_seed

# The non-learned baselines: (pair item) -> composite.
_BASELINE_COMPOSITES = {
    "scene": lambda item: item["scene_image"].copy(),
    "copy_paste": lambda item: copy_paste(item["object_image"], item["object_mask"], item["scene_image"], item["scene_mask"]),
}
BASELINES = tuple(_BASELINE_COMPOSITES)

Composer = Callable[[list[dict], list[int]], list[np.ndarray]]


def noise_generator(pair_id: str, seed: int) -> torch.Generator:
    """The CPU generator of a (pair, seed): the same initial noise for every arm
    (CPU, so that the noise does not depend on the device either)."""
    return torch.Generator().manual_seed(stable_seed(pair_id, int(seed)))


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has duplicates: {seeds!r}")
    return [int(s) for s in seeds]


def _as_benchmark(benchmark) -> BenchmarkSet:
    if isinstance(benchmark, BenchmarkSet):
        return benchmark
    if isinstance(benchmark, (str, PathLike)):
        return BenchmarkSet(benchmark)
    raise TypeError(f"benchmark must be a BenchmarkSet or a folder path, got {type(benchmark).__name__}")


def resolve_metric_backbones(metric_backbones: str | None, random_backbones: bool = False, default: str = "real") -> str:
    """The `metric_backbones` option ("real", "world", "random"); `random_backbones=True` is
    the older spelling of "random" (the two may not disagree); None takes `default`."""
    if random_backbones:
        if metric_backbones not in (None, "random"):
            raise ValueError(f"random_backbones=True contradicts metric_backbones={metric_backbones!r}")
        return "random"
    return check_metric_backbones(default if metric_backbones is None else metric_backbones)


def _default_option(backbones: MetricBackbones | None, default: str) -> str:
    # Given backbones name their own source; otherwise the caller's default.
    if backbones is None:
        return default
    return {source: option for option, source in METRIC_BACKBONES.items()}[backbones.source]


def _backbones(backbones: MetricBackbones | None, metric_backbones: str) -> MetricBackbones:
    if backbones is None:
        return load_backbones(metric_backbones=metric_backbones)
    if not isinstance(backbones, MetricBackbones):
        raise TypeError(f"backbones must be eval.backbones.MetricBackbones, got {type(backbones).__name__}")
    if backbones.source != METRIC_BACKBONES[metric_backbones]:
        raise ValueError(
            f"the given backbones are {backbones.source} ({backbones.clip.name}, {backbones.dino.name}) but "
            f"metric_backbones={metric_backbones!r}: pass the option that names them"
        )
    return backbones


def _safe_name(pair_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id)


def _reference_key(item: dict) -> str:
    digest = hashlib.sha1(item["object_image"].tobytes())
    digest.update(np.packbits(item["object_mask"]).tobytes())
    digest.update(str(item["object_image"].shape).encode())
    return digest.hexdigest()


class _Metrics:
    """Per-row metrics with the backbones loaded once and each reference embedded once."""

    def __init__(self, backbones: MetricBackbones):
        self.backbones = backbones
        self.reference_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.gallery: torch.Tensor | None = None  # DINO embeddings of every benchmark reference, in pair order
        self.gallery_index: dict[str, int] = {}  # pair_id -> its row in the gallery

    def set_gallery(self, items: list[dict]) -> None:
        """The references instance retrieval searches: every pair's of the benchmark."""
        self.gallery = self.references(items)[1]
        self.gallery_index = {item["pair_id"]: n for n, item in enumerate(items)}

    def _embed(self, embedder: ImageEmbedder, regions: list[np.ndarray]) -> torch.Tensor:
        return embedder(torch.stack([square_tensor(r, embedder.image_size) for r in regions]))

    def references(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [_reference_key(item) for item in items]
        missing = {k: item for k, item in zip(keys, items) if k not in self.reference_cache}
        if missing:
            regions = [reference_region(i["object_image"], i["object_mask"]) for i in missing.values()]
            clip, dino = (self._embed(e, regions) for e in (self.backbones.clip, self.backbones.dino))
            for n, k in enumerate(missing):
                self.reference_cache[k] = (clip[n], dino[n])
        return tuple(torch.stack([self.reference_cache[k][i] for k in keys]) for i in (0, 1))

    def __call__(self, items: list[dict], composites: list[np.ndarray]) -> tuple[list[dict], list[torch.Tensor]]:
        """Rows of metric values and the generated boxes (for diversity)."""
        regions = [generated_region(c, i["scene_mask"]) for c, i in zip(composites, items)]
        ref_clip, ref_dino = self.references(items)
        clip_i = embed_similarity(self._embed(self.backbones.clip, regions), ref_clip)
        dino = self._embed(self.backbones.dino, regions)
        dino_i = embed_similarity(dino, ref_dino)
        # Instance retrieval (as the fidelity ladder's): is the pair's own reference the nearest of all?
        nearest = (dino @ self.gallery.T).argmax(1).tolist() if self.gallery is not None else None
        rows, boxes = [], []
        for n, (item, composite) in enumerate(zip(items, composites)):
            psnr = ssim = float("nan")
            if item["target_image"] is not None and item["target_mask"] is not None:
                pred, target = image_to_tensor(composite), image_to_tensor(item["target_image"])
                mask = torch.from_numpy(item["target_mask"])[None]
                psnr = float(masked_psnr(pred, target, mask)[0])
                ssim = float(masked_ssim(pred, target, mask)[0])
            seam = seam_error(composite, item["scene_image"], item["object_image"], item["object_mask"],
                              item["scene_mask"])
            retrieved = float(nearest[n] == self.gallery_index[item["pair_id"]]) if nearest else float("nan")
            rows.append({"clip_i": float(clip_i[n]), "dino_i": float(dino_i[n]), "psnr_mask": psnr, "ssim_mask": ssim,
                         "seam": seam, "retrieved": retrieved})
            boxes.append(image_to_tensor(generated_region(composite, item["scene_mask"], remove_background=False))[0])
        return rows, boxes


def _run(
    compose: Composer,
    benchmark,
    seeds,
    arm: str,
    config: dict,
    backbones: MetricBackbones | None,
    metric_backbones: str,
    batch_size: int,
    save_images: str | PathLike | None,
    progress: bool,
    extra_columns: dict | None,
) -> pd.DataFrame:
    benchmark = _as_benchmark(benchmark)
    seeds = _check_seeds(seeds)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    extra = dict(extra_columns or {})
    clash = sorted(set(extra) & {"pair_id", "seed", "arm", *config})
    if clash:
        raise ValueError(f"extra_columns {clash} would overwrite the runner's own columns")
    backbones = _backbones(backbones, metric_backbones)
    metrics = _Metrics(backbones)
    metrics.set_gallery([benchmark[i] for i in range(len(benchmark))])
    out_dir = None
    if save_images is not None:
        out_dir = Path(save_images)
        out_dir.mkdir(parents=True, exist_ok=True)
    provenance = {
        "metric_source": backbones.source,
        "clip_backbone": backbones.clip.name,
        "dino_backbone": backbones.dino.name,
    }

    rows: list[dict] = []
    boxes: dict[str, list[torch.Tensor]] = {}
    diversity_of: dict[str, float] = {}
    pending: list[tuple[dict, int]] = []
    bar = tqdm(total=len(benchmark) * len(seeds), desc=f"evaluate {arm}", disable=not progress, unit="image")

    def flush() -> None:
        items, batch_seeds = [p[0] for p in pending], [p[1] for p in pending]
        start = time.perf_counter()
        composites = compose(items, batch_seeds)
        generated = time.perf_counter()
        values, generated_boxes = metrics(items, composites)
        measured = time.perf_counter()
        for item, seed, composite, value, box in zip(items, batch_seeds, composites, values, generated_boxes):
            pair_id = item["pair_id"]
            rows.append({
                "pair_id": pair_id, "seed": seed, "arm": arm, **config, **value, **provenance,
                "gen_seconds": (generated - start) / len(items),
                "metric_seconds": (measured - generated) / len(items),
                **extra,
            })
            boxes.setdefault(pair_id, []).append(box)
            if len(boxes[pair_id]) == len(seeds):
                diversity_of[pair_id] = diversity(torch.stack(boxes.pop(pair_id)))
            if out_dir is not None:
                stem = f"{_safe_name(pair_id)}_seed{seed}"
                PIL.Image.fromarray(composite).save(out_dir / f"{stem}.png")
                PIL.Image.fromarray(generated_region(composite, item["scene_mask"])).save(out_dir / f"{stem}_region.png")
        bar.update(len(items))
        pending.clear()

    try:
        for index in range(len(benchmark)):
            item = benchmark[index]
            for seed in seeds:
                pending.append((item, seed))
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
    finally:
        bar.close()
    frame = pd.DataFrame.from_records(rows)
    frame.insert(frame.columns.get_loc("psnr_mask") + 2, "diversity", frame["pair_id"].map(diversity_of))
    return frame


def default_metric_backbones(pipeline) -> str:
    """"world" for a pipeline of the embedded default (the tiny preset's image size), "real" otherwise."""
    from anydoor.presets import TINY_IMAGE_SIZE

    return "world" if int(pipeline.config.image_size) == TINY_IMAGE_SIZE else "real"


def _id_extractor_name(extractor) -> str:
    from anydoor.models.id_extractors import CLIPIDExtractor, DINOv2IDExtractor

    if isinstance(extractor, CLIPIDExtractor):
        return "clip"
    if isinstance(extractor, DINOv2IDExtractor):
        return "dinov2-global" if extractor.config.tokens == "global" else "dinov2"
    return type(extractor).__name__


def evaluate(
    pipeline,
    benchmark,
    seeds: Sequence[int] = (0,),
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    *,
    arm: str = "anydoor",
    backbones: MetricBackbones | None = None,
    metric_backbones: str | None = None,
    random_backbones: bool = False,
    batch_size: int = 4,
    save_images: str | PathLike | None = None,
    progress: bool = True,
    extra_columns: dict | None = None,
    shape_control: bool = False,
    reference_from: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Generate every (pair, seed) of `benchmark` with `pipeline` and score it.

    Args:
        pipeline: an `AnyDoorPipeline` (its own progress bar is turned off).
        benchmark: a `BenchmarkSet` or its folder.
        seeds: sample seeds; the initial noise of (pair, seed) is
            `noise_generator(pair_id, seed)`, the same for every arm.
        num_inference_steps, guidance_scale: the sampler's (released: 50, 5.0).
        arm: the arm's name in the ``arm`` column.
        backbones: the metric backbones (`eval.backbones.load_backbones`), to
            share across arms; None loads those `metric_backbones` names.
        metric_backbones: "real" (downloaded CLIP/DINO weights), "world"
            (the embedded world's shipped backbones) or "random" (random
            init); None: the given `backbones`' own, else "world" for a
            pipeline of the tiny preset (64 px) and "real" otherwise. Rows
            record it as ``metric_source``.
        random_backbones: the older spelling of ``metric_backbones="random"``.
        batch_size: (pair, seed) images per pipeline call; results do not
            depend on it (one generator per image).
        save_images: a folder for ``<pair>_seed<seed>.png`` (composite) and
            ``<pair>_seed<seed>_region.png`` (the scored region), or None.
        extra_columns: constant columns for every row (e.g. ``{"train_seed": 0}``).
        shape_control: the pipeline's shape-controlled insertion (the mask
            channel is each pair's placement mask, not its box); recorded in
            the ``shape_control`` column.
        reference_from: {pair_id: another pair_id}: generate each pair with that pair's reference
            (the ``wrong-reference`` control, `eval.controls.benchmark_derangement`); every metric is
            still computed against the pair's own reference. Recorded in ``wrong_reference``.
    Returns:
        one row per (pair, seed), columns as in the module docstring.
    """
    pipeline.set_progress_bar_config(disable=True)
    metric_backbones = resolve_metric_backbones(
        metric_backbones, random_backbones, _default_option(backbones, default_metric_backbones(pipeline))
    )
    config = {
        "detail_map": pipeline.config.detail_map,
        "id_extractor": _id_extractor_name(pipeline.id_extractor),
        "remove_background": bool(pipeline.config.remove_background),
        "steps": int(num_inference_steps),
        "guidance": float(guidance_scale),
        "shape_control": bool(shape_control),
        "wrong_reference": reference_from is not None,
    }
    donors = _donor_references(benchmark, reference_from)

    def compose(items: list[dict], seeds_: list[int]) -> list[np.ndarray]:
        given = [donors.get(i["pair_id"], i) for i in items]
        output = pipeline(
            object_image=[g["object_image"] for g in given],
            object_mask=[g["object_mask"] for g in given],
            scene_image=[i["scene_image"] for i in items],
            scene_mask=[i["scene_mask"] for i in items],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[noise_generator(i["pair_id"], s) for i, s in zip(items, seeds_)],
            output_type="np",
            shape_control=shape_control,
        )
        # "np" composites are the uint8 composites / 255: rounding recovers them exactly.
        return [np.round(image * 255.0).astype(np.uint8) for image in output.images]

    return _run(compose, benchmark, seeds, arm, config, backbones, metric_backbones, batch_size, save_images, progress, extra_columns)


def _donor_references(benchmark, reference_from: dict[str, str] | None) -> dict[str, dict]:
    """{pair_id: the benchmark item whose reference it is generated with} (empty: its own)."""
    if reference_from is None:
        return {}
    data = _as_benchmark(benchmark)
    items = {item["pair_id"]: item for item in (data[i] for i in range(len(data)))}
    unknown = sorted((set(reference_from) | set(reference_from.values())) - set(items))
    if unknown:
        raise ValueError(f"reference_from names pairs that are not in the benchmark: {unknown[:5]}")
    missing = sorted(set(items) - set(reference_from))
    if missing:
        raise ValueError(f"reference_from gives no reference for pairs {missing[:5]}")
    return {pair: items[donor] for pair, donor in reference_from.items()}


def evaluate_baseline(
    name: str,
    benchmark,
    seeds: Sequence[int] = (0,),
    *,
    backbones: MetricBackbones | None = None,
    metric_backbones: str | None = None,
    random_backbones: bool = False,
    save_images: str | PathLike | None = None,
    progress: bool = True,
    extra_columns: dict | None = None,
) -> pd.DataFrame:
    """A non-learned baseline through the same runner (no model needed).

    ``scene``: the unchanged scene; ``copy_paste``: the background-removed
    reference resized into the placement box (`eval.crops.copy_paste`).
    Both are deterministic; they still get one row per seed so that paired
    comparisons match them row for row (their diversity is 0). The arm is
    named `name`; the pipeline columns are None. `metric_backbones` defaults
    to the given `backbones`' own, else "real".
    """
    if name not in BASELINES:
        raise ValueError(f"name={name!r} is not a baseline; choose one of {', '.join(BASELINES)}")
    config = {"detail_map": None, "id_extractor": None, "remove_background": None, "steps": None, "guidance": None,
              "shape_control": None, "wrong_reference": None}
    metric_backbones = resolve_metric_backbones(metric_backbones, random_backbones, _default_option(backbones, "real"))

    def compose(items: list[dict], seeds_: list[int]) -> list[np.ndarray]:
        return [_BASELINE_COMPOSITES[name](item) for item in items]

    return _run(compose, benchmark, seeds, name, config, backbones, metric_backbones, 16, save_images, progress, extra_columns)


def write_results(results: pd.DataFrame, out: str | PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Write ``results.parquet`` (every row) and ``summary.csv`` (`eval.stats.summarize`
    per arm: mean, std, n and the bootstrap CI columns, labelled by calibration) into `out`."""
    from eval.stats import summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path, summary_path = out / "results.parquet", out / "summary.csv"
    results.to_parquet(results_path, index=False)
    summarize(results, by="arm", seed=seed).to_csv(summary_path, index=False)
    return results_path, summary_path
