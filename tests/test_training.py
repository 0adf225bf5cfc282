"""Training: config loading, checkpoints, the loop on the tiny preset (CPU)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from anydoor.training.checkpoints import (
    COMPLETE_MARKER,
    atomic_folder,
    cached_folder,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
)
from anydoor.training.config import load_config, save_config

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "batch_size=2", "log_every=1", "wandb_mode=disabled", "learning_rate=1e-3", "model.trainable=full_unet",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from anydoor.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "data", videos=3, frames=3, size=64, benchmark_pairs=1, seed=0)
    return root / "data"


def tiny_config(data, out, *overrides):
    sources = (
        f"data=[{{path: '{data / 'videos'}', loader: video, kind: video}}, "
        f"{{path: '{data / 'images'}', loader: image_mask, kind: image}}]"
    )
    return load_config(None, [sources, f"output_dir={out}", *FAST, *overrides])


def weights(folder):
    return {
        f"{sub}.{k}": v
        for sub in ("unet", "controlnet", "id_extractor", "vae")
        for k, v in load_file(Path(folder) / sub / "diffusion_pytorch_model.safetensors").items()
    }


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["train_tiny.yaml", "train_sd21_dinov2.yaml"])
def test_shipped_configs_load_and_comment_every_field(name):
    path = REPO / "configs" / name
    config = load_config(path)
    assert config.data and config.max_steps > 0
    for line in path.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith(("#", "- ")) and not line.rstrip().endswith(":"):
            assert "#" in line, f"{name}: field without a comment: {line!r}"


def test_released_recipe_config():
    config = load_config(REPO / "configs" / "train_sd21_dinov2.yaml")
    assert (config.learning_rate, config.model.trainable, config.model.preset) == (1e-5, "released", "base")
    assert config.timestep_sampler == "ats" and config.cond_dropout == 0.0
    assert {s.kind for s in config.data} == {"video", "multiview", "image"}


def test_trainable_default_is_the_released_set():
    # Both presets start from a pretrained base now (the tiny one from the world's, issue 26).
    tiny = load_config(REPO / "configs" / "train_tiny.yaml", ["model.trainable=null"])
    base = load_config(REPO / "configs" / "train_sd21_dinov2.yaml", ["model.trainable=null"])
    assert (tiny.model.trainable, base.model.trainable) == ("released", "released")


def test_overrides_round_trip(tmp_path):
    config = load_config(
        REPO / "configs" / "train_tiny.yaml",
        ["max_steps=20", "output_dir=runs/x", "model.id_extractor=clip", "data.1.weight=3", "learning_rate=2e-4",
         "max_grad_norm=null"],
    )
    assert (config.max_steps, config.output_dir, config.model.id_extractor) == (20, "runs/x", "clip")
    assert config.data[1].weight == 3.0 and config.learning_rate == 2e-4 and config.max_grad_norm is None
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["max_step=3"], r"unknown config key 'max_step'; did you mean max_steps"),
        (["model.presets=tiny"], r"unknown config key 'model.presets'; did you mean model.preset"),
        (["max_steps=abc"], r"'max_steps' must be int, got str 'abc'"),
        (["max_steps=2.5"], r"'max_steps' must be int"),
        (["mixed_precision=no"], r"'mixed_precision' must be str, got bool False"),
        (["data.0.kind=sketch"], r"'data.0.kind' must be one of video, image, multiview; got 'sketch'"),
        (["data=[]"], r"lists no data sources"),
        (["data.5.path=x"], r"not an index of a list of 2 items"),
        (["timestep_sampler=linear"], r"'timestep_sampler' must be one of"),
        (["cond_dropout=1.5"], r"'cond_dropout' must lie in \[0, 1\]"),
        (["batch_size=0"], r"'batch_size' must be >= 1"),
        (["max_steps"], r"must look like key=value"),
    ],
)
def test_bad_config_values_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(REPO / "configs" / "train_tiny.yaml", overrides)


def test_missing_data_sources_and_file():
    with pytest.raises(ValueError, match="lists no data sources"):
        load_config(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("no/such/config.yaml")


# --------------------------------------------------------------------------- checkpoints


def test_atomic_folder_crash_leaves_no_complete_checkpoint(tmp_path):
    done = checkpoint_path(tmp_path, 100)
    with atomic_folder(done) as tmp:
        (tmp / "weights").write_text("a")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_folder(checkpoint_path(tmp_path, 200)) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash")
    # A writer killed before the rename leaves a .tmp- folder; a folder without
    # the marker is not complete either.
    (tmp_path / "checkpoints" / "step-000300.tmp-999").mkdir()
    (tmp_path / "checkpoints" / "step-000300.tmp-999" / COMPLETE_MARKER).write_text("complete\n")
    checkpoint_path(tmp_path, 400).mkdir()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000100", "step-000300.tmp-999", "step-000400"]
    assert latest_checkpoint(tmp_path) == done
    assert (done / "weights").read_text() == "a" and (done / COMPLETE_MARKER).is_file()
    assert resolve_resume(tmp_path, tmp_path) == done
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(checkpoint_path(tmp_path, 400), tmp_path)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume(tmp_path / "elsewhere", tmp_path)


def test_atomic_folder_replaces_and_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        with atomic_folder(checkpoint_path(tmp_path, step)) as tmp:
            (tmp / "x").write_text(str(step))
    with atomic_folder(checkpoint_path(tmp_path, 3)) as tmp:
        (tmp / "y").write_text("new")
    assert sorted(p.name for p in checkpoint_path(tmp_path, 3).iterdir()) == [COMPLETE_MARKER, "y"]
    prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_cached_folder_builds_once_per_key_and_atomically(tmp_path):
    folder, builds = tmp_path / "cache", []

    def build(tmp: Path) -> dict:
        builds.append(tmp)
        (tmp / "weights").write_text(str(len(builds)))
        return {"n": len(builds)}

    meta = cached_folder(folder, "k1", "meta.json", build)
    assert meta == {"cache_key": "k1", "n": 1}
    assert list(json.loads((folder / "meta.json").read_text()).items()) == [("cache_key", "k1"), ("n", 1)]
    assert builds[0] != folder and not builds[0].exists()  # written aside, renamed into place
    assert cached_folder(folder, "k1", "meta.json", build) == meta and len(builds) == 1  # reused
    assert cached_folder(folder, "k1", "meta.json", build, reuse=False) == {"cache_key": "k1", "n": 2}
    assert cached_folder(folder, "k2", "meta.json", build) == {"cache_key": "k2", "n": 3}
    assert (folder / "weights").read_text() == "3"

    def crash(tmp: Path) -> dict:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        cached_folder(folder, "k3", "meta.json", crash)
    assert (folder / "weights").read_text() == "3"  # the old folder, whole
    assert json.loads((folder / "meta.json").read_text())["cache_key"] == "k2"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


# --------------------------------------------------------------------------- the loop


def test_loss_falls_on_a_fixed_batch(data):
    """AdamW steps on one batch: the loss at fixed noise and timesteps falls
    well below its initial value (about 1.1 -> 0.25 in 15 steps)."""
    from torch.utils.data import default_collate

    from anydoor.data.datasets import VideoPairDataset
    from anydoor.data.pairs import PairConfig
    from anydoor.models.denoiser import set_trainable
    from anydoor.presets import tiny_components, training_scheduler
    from anydoor.training.loop import AnyDoorDenoiser, diffusion_loss

    parts = tiny_components(seed=0)
    dataset = VideoPairDataset(data / "videos", PairConfig(image_size=64, box_rule="both"), seed=0)
    batch = default_collate([dataset[i] for i in range(2)])
    params = list(set_trainable(parts["unet"], parts["controlnet"], parts["id_extractor"], "full_unet").values())
    model = AnyDoorDenoiser(parts["unet"], parts["controlnet"], parts["id_extractor"])
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    scheduler = training_scheduler()

    def fixed_loss():
        with torch.no_grad():
            return diffusion_loss(model, parts["vae"], scheduler, batch, torch.Generator().manual_seed(123))[0].mean().item()

    initial = fixed_loss()
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        loss = diffusion_loss(model, parts["vae"], scheduler, batch, generator)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert initial > 0.8 and fixed_loss() < 0.5 * initial


def test_released_recipe_keeps_frozen_weights_bit_identical(data, tmp_path):
    from anydoor.models.denoiser import trainable_parameters
    from anydoor.training import train
    from anydoor.training.loop import _build_components

    config = tiny_config(data, tmp_path / "run", "max_steps=3", "checkpoint_every=3", "model.trainable=released")
    assert (config.model.vae, config.model.base_unet) == ("world", "world")  # starts from the shipped base
    result = train(config)
    parts = _build_components(config)  # what training started from
    before = {f"{name}.{k}": v for name in ("unet", "controlnet", "id_extractor", "vae")
              for k, v in parts[name].state_dict().items()}
    after = weights(result.pipeline_dir)
    assert before.keys() == after.keys()
    trained = set(trainable_parameters(parts["unet"], parts["controlnet"], parts["id_extractor"], "released"))
    frozen = before.keys() - trained
    assert "controlnet.conv_in.weight" in frozen and "unet.down_blocks.0.resnets.0.conv1.weight" in frozen
    assert any(k.startswith("id_extractor.backbone.") for k in frozen) and any(k.startswith("vae.") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not after["controlnet.conv_in.weight"].any()
    changed = [k for k in trained if not torch.equal(before[k], after[k])]
    assert sorted(changed) == sorted(trained)


def test_resume_equals_uninterrupted_run_and_checkpoint_samples(data, tmp_path):
    from anydoor import AnyDoorPipeline
    from anydoor.data.datasets import BenchmarkSet
    from anydoor.training import train

    # Gradient accumulation, EMA and dropout all carry state across the resume.
    common = ["checkpoint_every=1", "gradient_accumulation_steps=2", "ema=true", "ema_decay=0.9", "cond_dropout=0.5"]
    whole = train(tiny_config(data, tmp_path / "a", "max_steps=2", *common))
    train(tiny_config(data, tmp_path / "b", "max_steps=1", *common))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(tiny_config(data, tmp_path / "b", "max_steps=2", *common))
    resumed = train(tiny_config(data, tmp_path / "b", "max_steps=2", *common), resume=True)
    assert (whole.step, resumed.step) == (2, 2)
    a, b = weights(whole.pipeline_dir), weights(resumed.pipeline_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [1, 2]
    reference = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == [r["loss"] for r in reference]
    assert {"lr", "samples_per_s", "epoch"} <= lines[0].keys()
    assert any(k.startswith("loss_t") for k in lines[0]) and any(k in lines[0] for k in ("loss_video", "loss_image"))

    pipe = AnyDoorPipeline.from_pretrained(whole.pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    pair = BenchmarkSet(data / "benchmark")[0]
    out = pipe(
        pair["object_image"], pair["object_mask"], pair["scene_image"], scene_mask=pair["scene_mask"],
        num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np",
    )
    assert out.images[0].shape == pair["scene_image"].shape and np.isfinite(out.images[0]).all()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["data.0.path=/no/such/folder"], FileNotFoundError, r"'data.0' \(video source '/no/such/folder'\)"),
        (["batch_size=50"], ValueError, r"batch_size=50 x 1 process\(es\) = 50 is larger than the data set \(\d+ samples"),
        (["model.vae=/no/such/vae"], FileNotFoundError, r"'model.vae' = '/no/such/vae' is not a saved VAE folder"),
        (["model.base_unet=/no/such/unet"], FileNotFoundError,
         r"'model.base_unet' = '/no/such/unet' is not a saved UNet folder; pretrain one with `anydoor train-base"),
    ],
)
def test_bad_training_input(data, tmp_path, overrides, error, message):
    from anydoor.training import train

    with pytest.raises(error, match=message):
        train(tiny_config(data, tmp_path / "run", "max_steps=1", *overrides))


def test_resume_without_checkpoint(data, tmp_path):
    from anydoor.training import train

    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        train(tiny_config(data, tmp_path / "run", "max_steps=1"), resume=True)


def test_nan_loss_names_the_step_and_last_good_checkpoint(data, tmp_path):
    from anydoor.training import train

    config = tiny_config(data, tmp_path / "run", "max_steps=3", "checkpoint_every=1", "learning_rate=1e30",
                         "lr_scheduler=constant")
    with pytest.raises(RuntimeError, match=r"not finite .* at step 2; .*Last good checkpoint: .*step-000001"):
        train(config)


def test_v_prediction_base_model_is_refused(data, tmp_path):
    from diffusers import DDPMScheduler

    from anydoor.training import train

    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "sd21" / "scheduler")
    config = tiny_config(data, tmp_path / "run", "max_steps=1", "model.preset=base",
                         f"model.stable_diffusion={tmp_path / 'sd21'}")
    with pytest.raises(ValueError, match="v_prediction.*SD2.1-base"):
        train(config)


def test_cli_train_and_overrides(data, tmp_path):
    from anydoor.cli import main

    config = tiny_config(data, tmp_path / "unused")
    save_config(dataclasses.replace(config, max_steps=50), tmp_path / "c.yaml")
    out = tmp_path / "cli"
    sets = ["max_steps=1", f"output_dir={out}", "sample_every=1", "sample_count=2", "sample_steps=1"]
    assert main(["train", "--config", str(tmp_path / "c.yaml"), *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert (out / "pipeline" / "model_index.json").is_file()
    assert load_config(out / "config.yaml").max_steps == 1
    # Sample grid: rows reference / collage / target / generated, one column per pair.
    assert PIL.Image.open(out / "samples" / "step-000001.png").size == (2 * 64, 4 * 64)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "max_step=1"]) == 2
