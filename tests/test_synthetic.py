"""The synthetic data generator: reproducible bytes, exact benchmark targets, loadable by the real data sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from anydoor.cli import main as cli_main
from anydoor.data.datasets import BenchmarkSet, ImageMaskDataset, VideoPairDataset, read_label_map
from anydoor.data.pairs import PairConfig
from anydoor.data.synthetic import (
    AREA_RATIO_LIMITS,
    MIN_BOX_RATIO,
    make_object,
    render_sample_grid,
    write_synthetic_dataset,
)

TINY = dict(videos=2, frames=3, size=64, images=2, benchmark_pairs=2)


def _hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _load(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", seed=0, **TINY)


def test_same_seed_same_bytes_other_seed_other_bytes(written, tmp_path):
    again = write_synthetic_dataset(tmp_path / "again", seed=0, **TINY)
    other = write_synthetic_dataset(tmp_path / "other", seed=1, **TINY)
    reference = _hashes(written.root)
    assert _hashes(again.root) == reference
    other_hashes = _hashes(other.root)
    assert other_hashes.keys() == reference.keys()
    changed = [k for k in reference if reference[k] != other_hashes[k] and k.endswith((".jpg", ".png"))]
    assert len(changed) == sum(k.endswith((".jpg", ".png")) for k in reference)


def test_layout_counts_and_summary(written):
    root = written.root
    assert sorted(p.name for p in (root / "videos" / "JPEGImages").iterdir()) == ["v0000", "v0001"]
    frames = sorted(p.name for p in (root / "videos" / "JPEGImages" / "v0000").iterdir())
    assert frames == ["00000.jpg", "00005.jpg", "00010.jpg"]  # YouTube-VOS names annotated frames 5 apart
    assert len(list((root / "images" / "images").glob("*.jpg"))) == 2
    assert len(list((root / "images" / "masks").glob("*.png"))) == 2
    assert len((root / "benchmark" / "pairs.jsonl").read_text().splitlines()) == 2
    files = [p for p in root.rglob("*") if p.is_file()]
    assert written.files == len(files) and written.bytes == sum(p.stat().st_size for p in files)
    text = written.describe()
    assert "2 videos x 3 frames" in text and "2 images" in text and "2 pairs" in text and str(root) in text


def test_benchmark_objects_never_appear_in_training(written):
    manifest = json.loads((written.root / "manifest.json").read_text())
    ids = {split: {i for ids in items.values() for i in ids} for split, items in manifest["splits"].items()}
    assert ids["benchmark"] and ids["videos"] and ids["images"]
    assert not ids["benchmark"] & (ids["videos"] | ids["images"])
    assert sorted(ids["benchmark"]) == written.objects["benchmark"]
    # Texture seeds come from disjoint branches of the seed tree (spawn keys (split, item, ...)).
    branches = {split: {tuple(manifest["objects"][str(i)]["seed"][:1]) for i in ids[split]} for split in ids}
    assert branches == {"videos": {(0,)}, "images": {(1,)}, "benchmark": {(2,)}}


def test_scene_and_target_differ_only_on_the_object(written):
    bench = written.root / "benchmark"
    for line in (bench / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        scene, target = _load(bench / pair["scene"]), _load(bench / pair["target"])
        mask = _load(bench / pair["target_mask"]) == 255
        np.testing.assert_array_equal(scene[~mask], target[~mask])
        assert (scene[mask] != target[mask]).any(axis=-1).mean() > 0.5
        np.testing.assert_array_equal(_load(bench / pair["placement_mask"]), _load(bench / pair["target_mask"]))
        rgba = _load(bench / pair["reference"])
        assert rgba.shape == (64, 64, 4) and set(np.unique(rgba[..., 3])) == {0, 255}
        # Another pose: the reference's mask is not the target's.
        assert not np.array_equal(rgba[..., 3] == 255, mask)


def _check_size_limits(mask: np.ndarray) -> None:
    ys, xs = np.nonzero(mask)
    assert AREA_RATIO_LIMITS[0] <= mask.mean() <= AREA_RATIO_LIMITS[1]
    assert np.ptp(ys) + 1 >= MIN_BOX_RATIO * mask.shape[0] and np.ptp(xs) + 1 >= MIN_BOX_RATIO * mask.shape[1]


def test_every_object_mask_meets_the_size_limits(written):
    root = written.root
    for path in sorted((root / "videos" / "Annotations").rglob("*.png")):
        with PIL.Image.open(path) as image:
            assert image.mode == "P"  # YouTube-VOS palette annotations
        labels = read_label_map(path)
        ids = set(np.unique(labels).tolist()) - {0}
        assert ids in ({1}, {1, 2})
        for oid in ids:
            _check_size_limits(labels == oid)
    binary_masks = sorted((root / "images" / "masks").glob("*.png"))
    binary_masks += sorted((root / "benchmark" / "target_masks").glob("*.png"))
    for path in binary_masks:
        values = _load(path)
        assert set(np.unique(values).tolist()) == {0, 255}
        _check_size_limits(values == 255)


def test_objects_move_between_frames(written):
    masks = sorted((written.root / "videos" / "Annotations" / "v0000").glob("*.png"))
    first, last = read_label_map(masks[0]) == 1, read_label_map(masks[-1]) == 1
    assert (first != last).mean() > 0.01


def test_video_and_image_sets_load_as_valid_pairs(written):
    config = PairConfig(image_size=64)
    videos = VideoPairDataset(written.video_root, config)
    assert len(videos) == len(written.objects["videos"])
    images = ImageMaskDataset(written.image_dir, written.mask_dir, config)
    for ds, kind in ((videos, "video"), (images, "image")):
        for epoch in range(2):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                item = ds[i]
                assert item["kind"] == kind and item["hint"].shape == (4, 64, 64)
                assert (item["hint"][3] == 1).any()
    assert sum(videos.rejections.values()) + sum(images.rejections.values()) <= 2


def test_benchmark_loads_with_targets(written):
    ds = BenchmarkSet(written.benchmark_root)
    assert len(ds) == 2 and ds.has_targets
    item = ds[0]
    rgba = _load(written.benchmark_root / "refs" / "pair0000.png")
    np.testing.assert_array_equal(item["object_mask"], rgba[..., 3] == 255)
    np.testing.assert_array_equal(item["scene_mask"], item["target_mask"])
    assert item["target_image"].shape == item["scene_image"].shape == (64, 64, 3)


def test_object_identity_is_a_function_of_its_seed():
    seq = np.random.SeedSequence(5).spawn(2)
    a, b = make_object(1, seq[0], 48), make_object(1, seq[0], 48)
    c = make_object(2, seq[1], 48)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert not np.array_equal(a.rgb, c.rgb)
    assert a.alpha.dtype == np.float32 and 0.2 < a.alpha.mean() < 0.8


def test_argument_errors(written, tmp_path):
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        write_synthetic_dataset(written.root, **TINY)
    with pytest.raises(ValueError, match="videos must be >= 1, got 0"):
        write_synthetic_dataset(tmp_path / "a", videos=0)
    with pytest.raises(ValueError, match="frames must be >= 2, got 1"):
        write_synthetic_dataset(tmp_path / "a", frames=1)
    with pytest.raises(ValueError, match="size must be >= 32, got 16"):
        write_synthetic_dataset(tmp_path / "a", size=16)
    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        write_synthetic_dataset(tmp_path / "a", seed=True)
    assert not (tmp_path / "a").exists()


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--videos", "1", "--frames", "2", "--size", "48", "--images", "0", "--benchmark-pairs", "1"]
    assert cli_main(["synth-data", str(out), *args]) == 0
    assert "1 videos x 2 frames" in capsys.readouterr().out
    assert BenchmarkSet(out / "benchmark").has_targets
    assert cli_main(["synth-data", str(tmp_path / "bad"), "--frames", "1"]) == 2
    assert "frames must be >= 2" in capsys.readouterr().err


def test_sample_grid(written, tmp_path):
    path = render_sample_grid(written.root, tmp_path / "grid.png", rows=4, scale=2)
    with PIL.Image.open(path) as grid:
        # rows = min(4, 2 pairs, 2 videos); 5 columns of 128 px with 4 px gaps, a 16 px header.
        assert grid.size == (5 * 132 + 4, 16 + 2 * 132 + 4)
    with pytest.raises(FileNotFoundError, match="is not a synthetic data set"):
        render_sample_grid(tmp_path, tmp_path / "x.png")
