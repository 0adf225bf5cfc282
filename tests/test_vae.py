"""The embedded default's tiny VAE: training, scaling factor, cache."""

import json
import shutil

import pytest
import torch

from anydoor.training.vae import (
    META_FILE,
    VAETrainSettings,
    cache_key,
    ensure_tiny_vae,
    reconstruction_loss,
    train_vae,
)

# A short run at 32 px; the default recipe (1000 steps at 64 px) is measured by benchmarks/bench_training.py.
FAST = dict(steps=40, batch_size=4, image_size=32, patch_size=16, learning_rate=2e-3, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from anydoor.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("vae") / "data"
    write_synthetic_dataset(root, videos=3, frames=3, size=64, benchmark_pairs=0, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_out") / "vae"
    return out, train_vae(data, out, **FAST)


def test_reconstruction_beats_the_untrained_vae(trained):
    _, meta = trained
    assert meta["held_out_images"] >= 1 and meta["train_images"] >= 1
    # +2.5 dB: the held-out squared error falls to under 0.56 of the untrained VAE's (+3.4 dB measured).
    assert meta["psnr_held_out"] > meta["psnr_untrained"] + 2.5


def test_scaling_factor_is_one_over_the_latent_std(trained):
    from diffusers import AutoencoderKL

    out, meta = trained
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor == pytest.approx(1.0 / meta["latent_std"])
    assert json.loads((out / META_FILE).read_text())["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    # The same VAE the presets build: x4 downsampling into 4 channels.
    latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)


def test_cache_is_reused_and_keyed_by_settings_and_data(data, trained, tmp_path):
    out, meta = trained
    settings = {k: v for k, v in FAST.items() if k != "progress"}
    weights = out / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_vae(data, out, **settings) == out
    assert weights.stat().st_mtime_ns == stamp  # not retrained

    key = cache_key(data, VAETrainSettings(**settings))
    assert key == meta["cache_key"]
    assert cache_key(data, VAETrainSettings(**{**settings, "steps": 31})) != key
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    assert cache_key(copy, VAETrainSettings(**settings)) == key  # same bytes, other place
    frame = sorted((copy / "videos" / "JPEGImages").rglob("*.jpg"))[0]
    frame.write_bytes(frame.read_bytes() + b"\0")
    assert cache_key(copy, VAETrainSettings(**settings)) != key


def test_training_is_deterministic(data, trained, tmp_path):
    from safetensors.torch import load_file

    out, _ = trained
    again = tmp_path / "again"
    train_vae(data, again, **{**FAST, "steps": 2})
    twice = tmp_path / "twice"
    train_vae(data, twice, **{**FAST, "steps": 2})
    a = load_file(again / "diffusion_pytorch_model.safetensors")
    b = load_file(twice / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(steps=0), ValueError, "steps must be an int >= 1"),
        (dict(image_size=30), ValueError, "multiple of 4"),
        (dict(patch_size=64), ValueError, "must not exceed image_size"),
        (dict(kl_weight=-1.0), ValueError, "kl_weight"),
        (dict(chroma_weight=-0.5), ValueError, "chroma_weight must be >= 0, got -0.5"),
    ],
)
def test_bad_settings(data, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        train_vae(data, tmp_path / "out", **{**FAST, **kwargs})


def test_bad_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        train_vae(tmp_path / "missing", tmp_path / "out", **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds 0 training images"):
        train_vae(tmp_path / "empty", tmp_path / "out", **FAST)


def test_reconstruction_loss_weights_only_the_chroma_part_of_the_error():
    target = torch.zeros(2, 3, 1, 2)
    recon = target.clone()
    recon[0, :, 0, 0] = 0.1  # a grey (brightness) error: no chroma part
    recon[1, 0, 0, 1] = 0.3  # a red error: chroma part (0.2, -0.1, -0.1)
    plain = torch.tensor([3 * 0.1**2, 0.3**2])
    chroma = torch.tensor([0.0, 0.2**2 + 2 * 0.1**2])
    for weight in (0.0, 3.0):
        torch.testing.assert_close(reconstruction_loss(recon, target, weight), plain + weight * chroma)
