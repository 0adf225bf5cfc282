"""The fidelity ladder: where identity is lost before any model speaks (issue 30).

For each benchmark pair with a true target, three composites, each scored
like an arm (`eval.runner`'s metrics: CLIP-I / DINO-I of the generated
region against the pair's reference, PSNR / SSIM inside the true mask):

(a) ``target``: the true target itself (PSNR/SSIM against itself are not
    defined: left empty);
(b) ``crop geometry``: the target's crop in the pipeline's geometry
    (`pairs.crop_as_generated`: crop, pad square, resize to the model's side)
    pasted back (`pairs.paste_back`): what a perfect sample would give;
(c) ``VAE, perfect latents``: (b)'s crop encoded to the VAE posterior's mean
    and decoded before pasting: what a perfect latent sample would give.

Each row also gets instance retrieval: is the pair's own reference the
nearest (in-world DINO-I) among all the benchmark's references? Works for
real weights too (SD2.1's VAE on real pairs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from anydoor.data.pairs import PairConfig, crop_as_generated, paste_back, prepare_inference_inputs

LADDER_ROWS = ("target", "crop geometry", "VAE, perfect latents")


def target_crop(item: dict, config: PairConfig):
    """The true target's crop in the pipeline's geometry: (uint8 S x S x 3, `PasteInfo`)."""
    sample = prepare_inference_inputs(
        item["object_image"], item["object_mask"], item["scene_image"], scene_mask=item["scene_mask"], config=config
    )
    return crop_as_generated(item["target_image"], sample.paste, config.image_size), sample.paste


@torch.no_grad()
def through_vae(vae, crop: np.ndarray) -> np.ndarray:
    """decode(mean(encode(crop))) of a uint8 S x S x 3 crop, as uint8."""
    parameter = next(vae.parameters())
    x = torch.from_numpy(crop).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    x = x.to(device=parameter.device, dtype=parameter.dtype)
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].float().clamp(-1, 1)
    return ((recon.permute(1, 2, 0).cpu() + 1.0) * 127.5).round().byte().numpy()


def ladder_composites(item: dict, vae, image_size: int) -> dict[str, np.ndarray]:
    """{row: composite} for one benchmark item (`LADDER_ROWS`; the VAE row only when `vae` is given)."""
    crop, paste = target_crop(item, PairConfig(image_size=image_size))
    rows = {"target": item["target_image"], "crop geometry": paste_back(crop, item["scene_image"], paste)}
    if vae is not None:
        rows["VAE, perfect latents"] = paste_back(through_vae(vae, crop), item["scene_image"], paste)
    return rows


def fidelity_ladder(benchmark, vae, backbones, image_size: int = 64) -> pd.DataFrame:
    """One row per (pair, ladder row): ``arm`` (the ladder row), ``pair_id``, ``seed`` (0), ``clip_i``,
    ``dino_i`` (x100, as the runner's), ``psnr_mask``, ``ssim_mask``, ``retrieved`` (1.0 when the pair's
    own reference is the nearest of all the benchmark's references by DINO-I), and the metric provenance."""
    from eval.crops import generated_region, square_tensor
    from eval.runner import _Metrics, _as_benchmark

    data = _as_benchmark(benchmark)
    items = [data[i] for i in range(len(data))]
    missing = [item["pair_id"] for item in items if item["target_image"] is None or item["target_mask"] is None]
    if missing:
        raise ValueError(f"the fidelity ladder needs true targets; pairs without one: {missing[:5]}")
    metrics = _Metrics(backbones)
    _, references = metrics.references(items)  # DINO-I embeddings of every reference
    composites = [ladder_composites(item, vae, image_size) for item in items]
    rows = []
    for name in composites[0]:
        images = [c[name] for c in composites]
        values, _ = metrics(items, images)
        regions = [generated_region(c, i["scene_mask"]) for c, i in zip(images, items)]
        embedded = backbones.dino(torch.stack([square_tensor(r, backbones.dino.image_size) for r in regions]))
        nearest = (embedded @ references.T).argmax(1).numpy()
        for n, (item, value) in enumerate(zip(items, values)):
            if name == "target":  # PSNR / SSIM of the target against itself: not defined
                value = {**value, "psnr_mask": float("nan"), "ssim_mask": float("nan")}
            rows.append({"arm": name, "pair_id": item["pair_id"], "seed": 0, **value,
                         "retrieved": float(nearest[n] == n), "metric_source": backbones.source,
                         "clip_backbone": backbones.clip.name, "dino_backbone": backbones.dino.name})
    return pd.DataFrame(rows)


def ladder_table(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per ladder row and metric: mean [95% CI], and the paired difference against the target row with its CI
    (bootstrap over pairs; retrieval top-1 as a share)."""
    from eval.stats import bootstrap_ci, compare, stable_seed, summarize

    summary = summarize(rows, metrics=["clip_i", "dino_i", "psnr_mask", "ssim_mask"], seed=seed)
    paired = compare(rows, "target", metrics=["clip_i", "dino_i"], seed=seed)
    records = []
    target = rows[rows["arm"] == "target"].set_index("pair_id")["retrieved"]
    for arm, group in rows.groupby("arm"):
        values = group.set_index("pair_id")["retrieved"]
        low, high = bootstrap_ci(values.to_numpy(), stable_seed(seed, arm, "retrieved"))
        record = {"arm": arm, "metric": "retrieved", "mean": float(values.mean()), "ci_low": low, "ci_high": high,
                  "n_pairs": int(values.size)}
        if arm != "target":
            d = (values - target.loc[values.index]).to_numpy()
            d_low, d_high = bootstrap_ci(d, stable_seed(seed, arm, "retrieved", "diff"))
            record.update(mean_diff=float(d.mean()), diff_ci_low=d_low, diff_ci_high=d_high)
        records.append(record)
    table = summary[["arm", "metric", "mean", "ci_low", "ci_high", "n_pairs"]].merge(
        paired[["arm", "metric", "mean_diff", "ci_low", "ci_high"]].rename(
            columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"}),
        on=["arm", "metric"], how="left")
    table = pd.concat([table, pd.DataFrame.from_records(records)], ignore_index=True)
    order = {name: i for i, name in enumerate(LADDER_ROWS)}
    table["metric_source"] = rows["metric_source"].iloc[0] if "metric_source" in rows else "random"
    return table.sort_values(["metric", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s,
                             ignore_index=True)


def ladder_frame(table: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """One row per ladder row, one column per metric: "mean [CI]" and, below the target row, the paired
    difference to the target with its CI. `source`: the metric backbones' (`metric_source`), for the labels."""
    from eval.metrics import metric_label

    source = source or (str(table["metric_source"].iloc[0]) if "metric_source" in table else "random")
    metrics = [m for m in ("dino_i", "clip_i", "retrieved", "psnr_mask", "ssim_mask") if m in set(table["metric"])]
    header = {"dino_i": metric_label("dino_i", source), "clip_i": metric_label("clip_i", source),
              "retrieved": "retrieval top-1", "psnr_mask": "PSNR in mask (dB)", "ssim_mask": "SSIM in mask"}
    records = []
    for name in LADDER_ROWS:
        record = {"row": name}
        for metric in metrics:
            hit = table[(table["arm"] == name) & (table["metric"] == metric)]
            if hit.empty:
                record[header[metric]] = "-"
                continue
            r = hit.iloc[0]
            cell = f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            if name != "target" and not pd.isna(r.get("mean_diff")):
                cell += f"; {r['mean_diff']:+.2f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]"
            record[header[metric]] = cell
        if any(v != "-" for k, v in record.items() if k != "row"):
            records.append(record)
    return pd.DataFrame.from_records(records)


def format_ladder(table: pd.DataFrame, source: str | None = None) -> str:
    """Markdown of `ladder_frame`."""
    frame = ladder_frame(table, source)
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
