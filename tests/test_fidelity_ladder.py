"""The fidelity ladder (issue 30): target, crop geometry, VAE with perfect latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anydoor.data.datasets import BenchmarkSet
from anydoor.data.synthetic import write_synthetic_dataset


class _Latents:
    def __init__(self, x):
        self.x = x

    def mode(self):
        return self.x


class _Out:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class IdentityAutoencoder(nn.Module):
    """encode = decode = identity: a VAE that loses nothing."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return _Out(latent_dist=_Latents(x))

    def decode(self, z):
        return _Out(sample=z)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder") / "data"
    write_synthetic_dataset(root, videos=1, frames=2, images=1, benchmark_pairs=2, seed=3)
    return BenchmarkSet(root / "benchmark")


@pytest.fixture(scope="module")
def backbones():
    from eval.backbones import load_backbones

    return load_backbones(metric_backbones="random")


def test_identity_autoencoder_gives_the_crop_geometry_row(benchmark):
    from eval.fidelity_ladder import LADDER_ROWS, ladder_composites

    item = benchmark[0]
    rows = ladder_composites(item, IdentityAutoencoder(), 64)
    assert tuple(rows) == LADDER_ROWS
    assert np.array_equal(rows["VAE, perfect latents"], rows["crop geometry"])
    assert np.array_equal(rows["target"], item["target_image"])
    # Crop geometry changes only the crop's interior; everything outside stays the scene.
    changed = np.any(rows["crop geometry"] != item["scene_image"], axis=-1)
    assert changed.any() and not changed[item["target_mask"] == 0].all()


def test_ladder_rows_on_two_benchmark_pairs_with_a_tiny_vae(benchmark, backbones):
    from diffusers import AutoencoderKL

    from anydoor.presets import tiny_vae_config
    from eval.fidelity_ladder import fidelity_ladder, format_ladder, ladder_table

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config()).eval()  # untrained: loses almost everything
    rows = fidelity_ladder(benchmark, vae, backbones)
    assert len(rows) == 2 * 3 and set(rows["arm"]) == {"target", "crop geometry", "VAE, perfect latents"}
    by = rows.set_index(["arm", "pair_id"])
    assert rows.loc[rows["arm"] == "target", "psnr_mask"].isna().all()
    geometry = rows.loc[rows["arm"] == "crop geometry", "psnr_mask"]
    through = rows.loc[rows["arm"] == "VAE, perfect latents", "psnr_mask"]
    assert (geometry > 20).all() and (through.to_numpy() < geometry.to_numpy()).all()
    assert set(rows["retrieved"]) <= {0.0, 1.0}
    assert rows["dino_i"].between(-100, 100).all()
    # The target row's own similarity is the reference-target similarity, whatever the VAE.
    again = fidelity_ladder(benchmark, None, backbones)
    assert set(again["arm"]) == {"target", "crop geometry"}
    assert np.allclose(again.set_index(["arm", "pair_id"]).loc["target", "dino_i"], by.loc["target", "dino_i"])
    text = format_ladder(ladder_table(rows))
    assert text.count("\n| ") == 3 and "VAE, perfect latents" in text


def test_the_ladder_needs_true_targets(tmp_path, benchmark, backbones):
    import json
    import shutil

    from eval.fidelity_ladder import fidelity_ladder

    copy = tmp_path / "bench"
    shutil.copytree(benchmark.root, copy)
    lines = [json.loads(line) for line in (copy / "pairs.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("target"), line.pop("target_mask")
    (copy / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match="needs true targets"):
        fidelity_ladder(BenchmarkSet(copy), None, backbones)
