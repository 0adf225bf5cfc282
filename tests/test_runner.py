"""The benchmark runner, the baselines and `anydoor evaluate` (eval/runner.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch

from anydoor.cli import main
from anydoor.data.datasets import BenchmarkSet
from anydoor.data.synthetic import write_synthetic_dataset
from anydoor.presets import tiny_pipeline
from eval.backbones import load_backbones
from eval.metrics import masked_psnr
from eval.runner import evaluate, evaluate_baseline, noise_generator

STEPS = 2
SEEDS = [0, 1]
METRICS = ["clip_i", "dino_i", "psnr_mask", "ssim_mask", "diversity", "seam", "retrieved"]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root, videos=1, frames=2, size=64, benchmark_pairs=2, seed=0)
    return BenchmarkSet(root / "benchmark")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def backbones():
    return load_backbones(metric_backbones="random")


@pytest.fixture(scope="module")
def results(pipe, benchmark, backbones, tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    df = evaluate(pipe, benchmark, SEEDS, STEPS, 5.0, arm="tiny", backbones=backbones, random_backbones=True,  # the older spelling
                  batch_size=3, save_images=images, progress=False, extra_columns={"train_seed": 0})
    return df, images


def test_rows_columns_and_provenance(results):
    df, _ = results
    assert len(df) == 4 and list(zip(df.pair_id, df.seed)) == [("pair0000", 0), ("pair0000", 1), ("pair0001", 0), ("pair0001", 1)]
    assert (df.arm == "tiny").all() and (df.train_seed == 0).all()
    assert (df.detail_map == "hf").all() and (df.id_extractor == "dinov2").all() and df.remove_background.all()
    assert (df.steps == STEPS).all() and (df.guidance == 5.0).all()
    assert (df.metric_source == "random").all()
    assert (df.clip_backbone == "random-ViT-B-32-tiny").all() and (df.dino_backbone == "random-dino-vits16-tiny").all()
    assert np.isfinite(df[METRICS].to_numpy()).all()
    assert (df.gen_seconds > 0).all() and (df.metric_seconds > 0).all()
    # diversity is one value per pair, repeated in the rows of that pair
    assert df.groupby("pair_id").diversity.nunique().eq(1).all()


def test_shape_control_is_recorded(results, pipe, benchmark, backbones):
    df, _ = results
    shaped = evaluate(pipe, benchmark, SEEDS, STEPS, 5.0, arm="tiny", backbones=backbones, metric_backbones="random",
                      progress=False, shape_control=True)
    assert (~df.shape_control.astype(bool)).all() and shaped.shape_control.astype(bool).all()
    assert list(shaped.pair_id) == list(df.pair_id) and np.isfinite(shaped[METRICS].to_numpy()).all()
    baselines = evaluate_baseline("scene", benchmark, SEEDS, backbones=backbones, metric_backbones="random", progress=False)
    assert baselines.shape_control.isna().all()  # a baseline has no mask channel


def test_batching_does_not_change_results(results, pipe, benchmark, backbones, tmp_path):
    """Batching changes only float rounding: a composite pixel may land one uint8 level
    apart (batch-size-dependent BLAS paths), which moves a metric by ~1e-5 of its value;
    a batching bug (noise or inputs of another image) changes the images outright."""
    df, images = results
    single = evaluate(pipe, benchmark, SEEDS, STEPS, 5.0, arm="tiny", backbones=backbones, metric_backbones="random",
                      batch_size=1, save_images=tmp_path, progress=False)
    for path in sorted(images.glob("pair*_seed?.png")):
        batched, alone = (np.asarray(PIL.Image.open(p), dtype=np.int16) for p in (path, tmp_path / path.name))
        assert np.abs(batched - alone).max() <= 1, path.name
    np.testing.assert_allclose(single[METRICS].to_numpy(), df[METRICS].to_numpy(), rtol=1e-3, atol=1e-3)


def test_common_random_numbers_and_saved_images(results, pipe, benchmark):
    """A saved composite equals a direct pipeline call with noise_generator(pair_id, seed):
    every arm gets the same noise for a (pair, seed), whatever batch it ran in."""
    _, images = results
    item = benchmark[1]
    direct = pipe(item["object_image"], item["object_mask"], item["scene_image"], item["scene_mask"],
                  num_inference_steps=STEPS, guidance_scale=5.0, generator=noise_generator(item["pair_id"], 1),
                  output_type="np").images[0]
    saved = np.asarray(PIL.Image.open(images / "pair0001_seed1.png"))
    np.testing.assert_array_equal(saved, np.round(direct * 255).astype(np.uint8))
    assert (images / "pair0001_seed1_region.png").is_file()
    a, b = noise_generator("pair0001", 1), noise_generator("pair0001", 1)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert not torch.equal(torch.randn(4, generator=noise_generator("pair0001", 0)), torch.randn(4, generator=noise_generator("pair0000", 1)))


def test_baselines_through_the_same_runner(benchmark, backbones, tmp_path):
    scene = evaluate_baseline("scene", benchmark, SEEDS, backbones=backbones, metric_backbones="random",
                              save_images=tmp_path, progress=False)
    paste = evaluate_baseline("copy_paste", benchmark, SEEDS, backbones=backbones, metric_backbones="random", progress=False)
    for df, arm in ((scene, "scene"), (paste, "copy_paste")):
        assert len(df) == 4 and (df.arm == arm).all() and df.detail_map.isna().all()
        np.testing.assert_allclose(df.diversity, 0.0, atol=1e-6)  # deterministic: every seed the same
    item = benchmark[0]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "pair0000_seed0.png")), item["scene_image"])
    as_tensor = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    expected = masked_psnr(as_tensor(item["scene_image"]), as_tensor(item["target_image"]), torch.from_numpy(item["target_mask"])[None])
    assert scene.psnr_mask.iloc[0] == pytest.approx(expected.item(), rel=1e-5)
    # the pasted reference is closer to the reference than the empty scene is
    assert paste.dino_i.mean() > scene.dino_i.mean()
    # Neither baseline touches the scene outside the placement box: no seam.
    assert (scene.seam == 0).all() and (paste.seam == 0).all()
    assert set(scene.retrieved) <= {0.0, 1.0} and set(paste.retrieved) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="name='blur' is not a baseline"):
        evaluate_baseline("blur", benchmark, SEEDS, backbones=backbones, metric_backbones="random")


def test_metric_backbones_must_name_the_given_backbones(pipe, benchmark, backbones, monkeypatch):
    # Given backbones name their source; an option that says otherwise is refused.
    with pytest.raises(ValueError, match="given backbones are random.*metric_backbones='world'"):
        evaluate(pipe, benchmark, SEEDS, STEPS, backbones=backbones, metric_backbones="world", progress=False)
    with pytest.raises(ValueError, match="given backbones are random.*metric_backbones='real'"):
        evaluate_baseline("scene", benchmark, SEEDS, backbones=backbones, metric_backbones="real", progress=False)
    with pytest.raises(ValueError, match="random_backbones=True contradicts metric_backbones='real'"):
        evaluate(pipe, benchmark, SEEDS, STEPS, backbones=backbones, metric_backbones="real", random_backbones=True)
    with pytest.raises(ValueError, match="metric_backbones='calibrated' is not one of real, world, random"):
        evaluate_baseline("scene", benchmark, SEEDS, metric_backbones="calibrated", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no weights here: the real backbones cannot load
    with pytest.raises(FileNotFoundError, match="ViT-B-32"):
        evaluate_baseline("scene", benchmark, SEEDS, progress=False)
    with pytest.raises(ValueError, match="seeds has duplicates"):
        evaluate_baseline("scene", benchmark, [0, 0], backbones=backbones, metric_backbones="random")


def test_world_backbones_flow_from_rows_to_labels(benchmark):
    from eval.stats import summarize

    rows = evaluate_baseline("copy_paste", benchmark, SEEDS, metric_backbones="world", progress=False)
    assert (rows.metric_source == "in-world").all()
    assert (rows.clip_backbone == "world-clip-i").all() and (rows.dino_backbone == "world-dino-i").all()
    labels = dict(zip(*summarize(rows)[["metric", "label"]].to_numpy().T))
    assert labels["clip_i"] == "CLIP-I (in-world)" and labels["dino_i"] == "DINO-I (in-world)"
    # Instance retrieval: the pasted reference finds its own reference among the benchmark's two
    # (the in-world DINO-I backbone separates them; the true targets do too, as the ladder shows).
    assert (rows.retrieved == 1.0).all()


def test_cli_writes_results_and_summary(pipe, benchmark, tmp_path, monkeypatch, capsys):
    pipe.save_pretrained(tmp_path / "arm-a")
    out = tmp_path / "out"
    argv = ["evaluate", "--pipeline", str(tmp_path / "arm-a"), "--benchmark", str(benchmark.root),
            "--seeds", "0", "1", "--out", str(out), "--steps", str(STEPS)]
    assert main(argv + ["--random-backbones"]) == 0
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 12 and sorted(results.arm.unique()) == ["arm-a", "copy_paste", "scene"]
    assert (results.metric_source == "random").all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"arm", "metric", "label", "mean", "std", "n", "ci_low", "ci_high"} <= set(summary.columns)
    assert set(summary.arm) == {"arm-a", "copy_paste", "scene"}
    clip_rows = summary[summary.metric == "clip_i"]
    assert len(clip_rows) == 3 and (clip_rows.label == "CLIP-sim (random-init)").all()
    assert not summary.label.isin(["CLIP-I", "DINO-I"]).any()
    # the real backbones without weights: a one-line error naming the backbone, exit status 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert main(argv + ["--metric-backbones", "real", "--out", str(tmp_path / "out2")]) == 2  # the last --out wins
    assert "ViT-B-32" in capsys.readouterr().err
