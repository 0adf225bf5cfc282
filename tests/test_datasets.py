"""Data sets read tiny data written here in the real layouts (YouTube-VOS, mask folders, DreamBooth, pairs.jsonl)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from anydoor.data.datasets import (
    BenchmarkSet,
    DreamBoothEvalSet,
    ImageMaskDataset,
    MixtureDataset,
    VideoObject,
    VideoPairDataset,
    read_label_map,
)
from anydoor.data.pairs import PairConfig, PairRejected

S = 32  # target side of the tiny pairs
CONFIG = PairConfig(image_size=S)
SIZE = 48  # frame side


# --------------------------------------------------------------------------- writers


def _save_palette(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
    image.save(path)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)


def _frame(rng: np.random.Generator, objects: list[tuple[int, tuple[int, int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """A noisy frame with textured discs: objects = [(id, centre, radius)]."""
    image = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    for oid, centre, radius in objects:
        cv2.circle(labels, centre, radius, oid, thickness=-1)
        image[labels == oid] = rng.integers(120, 255, ((labels == oid).sum(), 3), dtype=np.uint8)
    return image, labels


def write_videos(root: Path, meta: bool = True, bad_frame: str | None = None, tiny: bool = False) -> Path:
    """Two videos: v0 holds objects 1 and 2 in 4 frames, v1 object 1 in 3 frames.

    bad_frame: 'empty' makes v1's last frame lose its object (while meta.json
    still lists it), 'tiny' makes it a 2 px object. tiny=True makes every
    object tiny (no valid pair at all).
    """
    rng = np.random.default_rng(0)
    listing = {"videos": {}}
    layouts = {
        "v0": [[(1, (12 + 2 * t, 14), 8), (2, (34, 30 - t), 7)] for t in range(4)],
        "v1": [[(1, (20 + 3 * t, 24), 10)] for t in range(3)],
    }
    for vid, frames in layouts.items():
        names = [f"{5 * t:05d}" for t in range(len(frames))]
        for t, (name, objects) in enumerate(zip(names, frames)):
            if tiny:
                objects = [(oid, c, 1) for oid, c, _ in objects]
            if vid == "v1" and t == len(frames) - 1 and bad_frame == "empty":
                objects = []
            if vid == "v1" and t == len(frames) - 1 and bad_frame == "tiny":
                objects = [(1, (24, 24), 1)]
            image, labels = _frame(rng, objects)
            _save(root / "JPEGImages" / vid / f"{name}.jpg", image)
            _save_palette(root / "Annotations" / vid / f"{name}.png", labels)
        ids = sorted({oid for objects in frames for oid, _, _ in objects})
        listing["videos"][vid] = {"objects": {str(i): {"category": "disc", "frames": names} for i in ids}}
    if meta:
        (root / "meta.json").write_text(json.dumps(listing))
    return root


def write_image_folder(root: Path) -> tuple[Path, Path]:
    """a: {0, 255} mask; b: {0, 1} mask; c: ids {0, 1, 2}; d: empty mask; e: no mask (ignored)."""
    rng = np.random.default_rng(1)
    specs = {
        "a": ([(1, (20, 20), 10)], 255),
        "b": ([(1, (26, 22), 9)], 1),
        "c": ([(1, (14, 14), 8), (2, (34, 32), 8)], None),
        "d": ([], 255),
        "e": ([(1, (20, 20), 10)], 255),
    }
    for stem, (objects, binary_value) in specs.items():
        image, labels = _frame(rng, objects)
        _save(root / "images" / f"{stem}.jpg", image)
        if stem == "e":
            continue
        if binary_value is not None:
            labels = (labels > 0).astype(np.uint8) * binary_value
        _save(root / "masks" / f"{stem}.png", labels)
    return root / "images", root / "masks"


def _rgba_object(rng) -> np.ndarray:
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    rgba[5:35, 5:25, 3] = 255
    return rgba


def write_dreambooth(root: Path, objects: str = "objects", scenes: str = "scenes") -> Path:
    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        _save(root / objects / f"{name}.png", _rgba_object(rng))
    for k in range(3):
        _save(root / scenes / f"{k:02d}_GT.png", rng.integers(0, 255, (50, 60, 3), dtype=np.uint8))
        mask = np.zeros((50, 60), np.uint8)
        mask[10 + k : 30, 15:40] = 255
        _save(root / scenes / f"{k:02d}_mask.png", mask)
    return root


def write_benchmark(root: Path, targets: bool = True) -> tuple[Path, dict]:
    rng = np.random.default_rng(3)
    arrays = {}
    lines = []
    for k in range(2):
        pid = f"p{k}"
        scene = rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)
        mask = np.zeros((40, 44), np.uint8)
        mask[8:30, 10 + k : 34] = 255
        target = scene.copy()
        target[mask > 0] = 7
        rgba = _rgba_object(rng)
        _save(root / "refs" / f"{pid}.png", rgba)
        _save(root / "scenes" / f"{pid}.png", scene)
        _save(root / "masks" / f"{pid}.png", mask)
        record = {"pair_id": pid, "reference": f"refs/{pid}.png", "scene": f"scenes/{pid}.png"}
        record["placement_mask"] = f"masks/{pid}.png"
        if targets or k == 0:
            _save(root / "targets" / f"{pid}.png", target)
            _save(root / "target_masks" / f"{pid}.png", mask)
            record.update(target=f"targets/{pid}.png", target_mask=f"target_masks/{pid}.png")
        lines.append(json.dumps(record))
        arrays[pid] = dict(rgba=rgba, scene=scene, mask=mask > 0, target=target)
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root, arrays


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return write_videos(tmp_path_factory.mktemp("vos"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, Path]:
    return write_image_folder(tmp_path_factory.mktemp("sal"))


def _assert_valid_item(item: dict, kind: str) -> None:
    assert item["reference"].shape == (3, 224, 224) and item["reference"].dtype == torch.float32
    assert item["target"].shape == (3, S, S) and item["target"].dtype == torch.float32
    assert item["hint"].shape == (4, S, S) and item["hint"].dtype == torch.float32
    assert 0.0 <= item["reference"].min() and item["reference"].max() <= 1.0
    assert -1.0 <= item["target"].min() and item["target"].max() <= 1.0
    assert -1.0 <= item["hint"][:3].min() and item["hint"][:3].max() <= 1.0
    assert set(item["hint"][3].unique().tolist()) <= {-1.0, 0.0, 1.0} and (item["hint"][3] == 1).any()
    assert item["kind"] == kind


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("reference", "target", "hint")) and a["pair_id"] == b["pair_id"]


# --------------------------------------------------------------------------- videos


def test_video_items_are_valid_pairs_of_one_object(videos):
    ds = VideoPairDataset(videos, CONFIG)
    assert len(ds) == 3  # v0 objects 1 and 2, v1 object 1
    assert [(o.video, o.object_id) for o in ds.objects] == [("v0", 1), ("v0", 2), ("v1", 1)]
    for i in range(len(ds)):
        item = ds[i]
        _assert_valid_item(item, "video")
        assert item["source"] == str(videos)
        video, oid, frames = item["pair_id"].split("/")
        a, b = frames.split("-")
        assert (video, int(oid)) == (ds.objects[i].video, ds.objects[i].object_id)
        assert a != b  # min_frame_gap=1: two different frames
    assert ds.rejections == Counter()


def test_video_objects_found_from_masks_match_meta(videos, tmp_path):
    without_meta = tmp_path / "nometa"
    shutil.copytree(videos, without_meta)
    (without_meta / "meta.json").unlink()
    assert VideoPairDataset(without_meta).objects == VideoPairDataset(videos).objects
    # meta.json decides which objects exist: listing only v1 drops v0's objects.
    meta = json.loads((videos / "meta.json").read_text())
    del meta["videos"]["v0"]
    (without_meta / "meta.json").write_text(json.dumps(meta))
    assert VideoPairDataset(without_meta).objects == [VideoObject("v1", 1, ("00000", "00005", "00010"))]


def test_video_default_config_uses_the_video_box_rule(videos):
    assert VideoPairDataset(videos).config.box_rule == "both"
    assert VideoPairDataset(videos, CONFIG).config.box_rule == "both"  # the video rule, whatever the config
    assert VideoPairDataset(videos, CONFIG).config.image_size == CONFIG.image_size
    assert VideoPairDataset(videos, CONFIG, box_rule="either").config.box_rule == "either"


def test_video_items_are_deterministic_per_seed_and_epoch(videos):
    a, b = VideoPairDataset(videos, CONFIG, seed=3), VideoPairDataset(videos, CONFIG, seed=3)
    assert all(_same(a[i], b[i]) for i in range(len(a)))
    assert _same(a[1], a[1])
    first = [a[i] for i in range(len(a))]
    a.set_epoch(1)
    assert not all(_same(x, a[i]) for i, x in enumerate(first))
    c = VideoPairDataset(videos, CONFIG, seed=4)
    assert not all(_same(x, c[i]) for i, x in enumerate(first))
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        a.set_epoch(-1)


def test_video_frame_gap_bounds(videos):
    ds = VideoPairDataset(videos, CONFIG, min_frame_gap=2, max_frame_gap=2)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            a, b = ds[i]["pair_id"].split("/")[2].split("-")
            assert abs(int(a) - int(b)) == 2 * 5  # two positions apart, frames named 00000, 00005, ...
    # v1 has 3 frames: gap 3 leaves only v0's objects; gap 4 leaves none.
    assert len(VideoPairDataset(videos, min_frame_gap=3)) == 2
    with pytest.raises(ValueError, match="no object annotated in at least 5 frames"):
        VideoPairDataset(videos, min_frame_gap=4)
    with pytest.raises(ValueError, match="max_frame_gap must be >= 2"):
        VideoPairDataset(videos, min_frame_gap=2, max_frame_gap=1)


@pytest.mark.parametrize(("bad", "reason"), [("empty", "empty_mask"), ("tiny", "area_ratio")])
def test_video_bad_frames_are_skipped_and_counted(tmp_path, bad, reason):
    ds = VideoPairDataset(write_videos(tmp_path, bad_frame=bad), CONFIG)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            _assert_valid_item(item, "video")
            assert not item["pair_id"].startswith("v1/1/00010") and not item["pair_id"].endswith("-00010")
    assert any(reason in r for r in ds.rejections), ds.rejections


def test_video_source_without_any_valid_pair_fails_clearly(tmp_path):
    root = write_videos(tmp_path, tiny=True)
    ds = VideoPairDataset(root, CONFIG, max_tries=6)
    message = r"no valid pair for item 0 in 6 tries \(rejections: \{'ref_area_ratio': 6\}"
    with pytest.raises(ValueError, match=message) as info:
        ds[0]
    assert str(root) in str(info.value)
    assert ds.rejections == Counter(ref_area_ratio=6)


def test_video_broken_data_is_not_swallowed(videos, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(videos, root)
    _save_palette(root / "Annotations" / "v1" / "00005.png", np.ones((10, 10), np.uint8))
    ds = VideoPairDataset(root, CONFIG)
    with pytest.raises(ValueError, match="00005.png' is"):
        for epoch in range(5):
            ds.set_epoch(epoch)
            ds[2]
    assert ds.rejections == Counter()


def test_video_layout_errors(videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nowhere' is not a folder; expected root/JPEGImages"):
        VideoPairDataset(tmp_path / "nowhere")
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(FileNotFoundError, match="Annotations' is not a folder"):
        VideoPairDataset(tmp_path)
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(ValueError, match="has no video with frames in both"):
        VideoPairDataset(tmp_path)
    broken = tmp_path / "badmeta"
    shutil.copytree(videos, broken)
    (broken / "meta.json").write_text('{"videos": {"v0": {"frames": []}}}')
    with pytest.raises(ValueError, match="meta.json' is not a YouTube-VOS meta.json"):
        VideoPairDataset(broken)
    with pytest.raises(ValueError, match="kind must be one of"):
        VideoPairDataset(videos, kind="movie")
    with pytest.raises(TypeError, match="config must be a PairConfig"):
        VideoPairDataset(videos, config={"image_size": 32})
    with pytest.raises(IndexError, match="index 3 out of range"):
        VideoPairDataset(videos)[3]


def test_read_label_map_keeps_palette_indices(tmp_path):
    labels = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    _save_palette(tmp_path / "m.png", labels)
    np.testing.assert_array_equal(read_label_map(tmp_path / "m.png"), labels)
    _save(tmp_path / "rgb.png", np.dstack([labels * 100, labels, labels]))
    with pytest.raises(ValueError, match="rgb.png' is a colour"):
        read_label_map(tmp_path / "rgb.png")


# --------------------------------------------------------------------------- image folders


def test_image_mask_items_and_object_ids(image_folder):
    images, masks = image_folder
    ds = ImageMaskDataset(images, masks, CONFIG)
    assert [stem for stem, _, _ in ds.items] == ["a", "b", "c", "d"]  # e has no mask
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            _assert_valid_item(item, "image")
            seen.add(item["pair_id"])
    # 255 and 1 masks are one object each; ids 1 and 2 of c both get drawn; d (empty) never.
    assert {"a/255", "b/1", "c/1", "c/2"} == seen
    assert ds.rejections["empty_mask"] >= 1


def test_image_mask_threshold_binarises_soft_masks(tmp_path):
    rng = np.random.default_rng(4)
    image, labels = _frame(rng, [(1, (24, 24), 12)])
    soft = cv2.GaussianBlur(labels.astype(np.float32) * 255, (5, 5), 0).astype(np.uint8)
    assert len(np.unique(soft)) > 3
    _save(tmp_path / "im" / "x.png", image)
    _save(tmp_path / "mk" / "x.png", soft)
    item = ImageMaskDataset(tmp_path / "im", tmp_path / "mk", CONFIG, threshold=128)[0]
    assert item["pair_id"] == "x/1"


def test_image_mask_binary_masks_as_users_have_them(tmp_path):
    """masks='binary': one object per file, PNG or JPEG in any mode, by the user-mask rule (> 128)."""
    rng = np.random.default_rng(5)
    image, labels = _frame(rng, [(1, (24, 24), 12)])
    truth = labels > 0
    on = np.where(truth, 200, 0).astype(np.uint8)
    _save(tmp_path / "im" / "rgb.png", image)
    _save(tmp_path / "mk" / "rgb.png", np.dstack([on, np.zeros_like(on), np.zeros_like(on)]))  # red on black
    _save(tmp_path / "im" / "jpg.png", image)
    PIL.Image.fromarray(np.where(truth, 255, 0).astype(np.uint8)).save(tmp_path / "mk" / "jpg.jpg", quality=95)
    _save(tmp_path / "im" / "empty.png", image)
    _save(tmp_path / "mk" / "empty.png", np.zeros_like(on))
    ds = ImageMaskDataset(tmp_path / "im", tmp_path / "mk", CONFIG, masks="binary", max_tries=1)
    assert [stem for stem, _, _ in ds.items] == ["empty", "jpg", "rgb"]
    assert np.array_equal(ds._candidate(2, np.random.default_rng(0))[1], truth)  # the red channel is above 128
    from_jpeg = ds._candidate(1, np.random.default_rng(0))[1]
    assert (from_jpeg & truth).sum() / (from_jpeg | truth).sum() > 0.98  # JPEG may move an edge pixel
    with pytest.raises(PairRejected, match="empty: no pixel is set"):
        ds._candidate(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="masks must be one of"):
        ImageMaskDataset(tmp_path / "im", tmp_path / "mk", masks="soft")
    with pytest.raises(ValueError, match="threshold applies to masks='ids' only"):
        ImageMaskDataset(tmp_path / "im", tmp_path / "mk", masks="binary", threshold=128)


def test_image_mask_errors(image_folder, tmp_path):
    images, masks = image_folder
    with pytest.raises(FileNotFoundError, match="mask_dir '.*missing' is not a folder"):
        ImageMaskDataset(images, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no image in image_dir '.*empty' \(0 images\)"):
        ImageMaskDataset(tmp_path / "empty", masks)
    only_d = tmp_path / "only_d"
    only_d.mkdir()
    shutil.copy(images / "d.jpg", only_d / "d.jpg")
    ds = ImageMaskDataset(only_d, masks, CONFIG, max_tries=3)
    with pytest.raises(ValueError, match=r"'.*only_d'.*\{'empty_mask': 3\}"):
        ds[0]


def test_dataloader_batches_items(videos, image_folder):
    sources = [(VideoPairDataset(videos, CONFIG), 1.0), (ImageMaskDataset(*image_folder, CONFIG), 1.0)]
    mix = MixtureDataset(sources, length=4)
    batch = next(iter(DataLoader(mix, batch_size=4)))
    assert batch["hint"].shape == (4, 4, S, S)
    assert len(batch["kind"]) == 4 and set(batch["kind"]) <= {"video", "image"}


# --------------------------------------------------------------------------- mixture


def test_mixture_weights_and_determinism(videos, image_folder):
    video_ds, image_ds = VideoPairDataset(videos, CONFIG), ImageMaskDataset(*image_folder, CONFIG)
    mix = MixtureDataset([(video_ds, 1), (image_ds, 3.0)], length=4000, seed=1)
    picks = [mix.source_index(i) for i in range(len(mix))]
    share = np.mean([s == 1 for s, _ in picks])
    assert abs(share - 0.75) < 0.03  # 4000 draws: standard error 0.007
    assert {j for s, j in picks if s == 0} == set(range(len(video_ds)))
    assert picks == [MixtureDataset([(video_ds, 1), (image_ds, 3)], 4000, seed=1).source_index(i) for i in range(4000)]
    mix.set_epoch(1)
    assert image_ds.epoch == 1 and video_ds.epoch == 1
    assert [mix.source_index(i) for i in range(50)] != picks[:50]
    for i in range(3):
        s, j = mix.source_index(i)
        item = mix[i]
        assert item["kind"] == ("video", "image")[s]
        assert _same(item, (video_ds, image_ds)[s][j])


def test_mixture_errors(videos):
    ds = VideoPairDataset(videos, CONFIG)
    with pytest.raises(ValueError, match="sources must be a non-empty list"):
        MixtureDataset([], 10)
    with pytest.raises(ValueError, match=r"sources\[1\] weight must be a positive number, got 0"):
        MixtureDataset([(ds, 1.0), (ds, 0)], 10)
    with pytest.raises(TypeError, match=r"sources\[0\] must be a \(dataset, weight\) pair"):
        MixtureDataset([ds], 10)
    with pytest.raises(ValueError, match="length must be >= 1"):
        MixtureDataset([(ds, 1.0)], 0)


# --------------------------------------------------------------------------- evaluation sets


def test_dreambooth_pairs_every_object_with_every_scene(tmp_path):
    ds = DreamBoothEvalSet(write_dreambooth(tmp_path))
    assert len(ds) == 6
    item = ds[4]  # objects outer (cat, dog), scenes inner (00, 01, 02)
    assert item["pair_id"] == "dog__01"
    assert item["object_image"].dtype == np.uint8 and item["object_image"].shape == (40, 30, 3)
    assert item["object_mask"].dtype == bool and item["object_mask"].sum() == 30 * 20
    assert item["scene_image"].shape == (50, 60, 3)
    assert item["scene_mask"].dtype == bool and item["scene_mask"].sum() == (30 - 11) * 25
    assert [ds[i]["pair_id"] for i in range(6)] == [f"{o}__{k:02d}" for o in ("cat", "dog") for k in range(3)]


def test_dreambooth_layout_errors(tmp_path):
    released = write_dreambooth(tmp_path / "rel", objects="FG", scenes="BG")
    assert len(DreamBoothEvalSet(released, objects_dir="FG", scenes_dir="BG")) == 6
    with pytest.raises(FileNotFoundError, match="objects_dir '.*objects' is not a folder"):
        DreamBoothEvalSet(released)
    (released / "BG" / "01_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="01_GT.png' has no placement mask"):
        DreamBoothEvalSet(released, objects_dir="FG", scenes_dir="BG")
    for sub in ("objects", "scenes"):
        (tmp_path / "empty" / sub).mkdir(parents=True)
    with pytest.raises(ValueError, match="has 0 object PNGs"):
        DreamBoothEvalSet(tmp_path / "empty")


def test_dreambooth_reads_masks_as_users_have_them(tmp_path):
    # The released examples: RGBA objects with soft alpha, RGB scene masks; also JPEG and palette masks.
    root = write_dreambooth(tmp_path)
    rng = np.random.default_rng(5)
    soft = _rgba_object(rng)
    soft[5:35, 5, 3] = 128  # a soft left edge: alpha > 128 is the object, 128 is not
    _save(root / "objects" / "cat.png", soft)
    mask = np.zeros((50, 60), np.uint8)
    mask[16:32, 16:40] = 255  # on the 8 px JPEG grid
    _save(root / "scenes" / "00_mask.png", np.dstack([mask] * 3))  # RGB
    PIL.Image.fromarray(mask).save(root / "scenes" / "01_mask.png", format="JPEG")  # a JPEG with a .png name
    _save_palette(root / "scenes" / "02_mask.png", (mask > 0).astype(np.uint8))
    ds = DreamBoothEvalSet(root)
    for i in range(3):
        item = ds[i]
        np.testing.assert_array_equal(item["scene_mask"], mask > 0)
    assert item["object_mask"].sum() == 30 * 19 and not item["object_mask"][5:35, 5].any()


def test_evaluation_sets_name_the_mask_file_that_is_wrong(tmp_path):
    root = write_dreambooth(tmp_path / "db")
    _save(root / "scenes" / "01_mask.png", np.full((50, 60), 255, np.uint8))
    with pytest.raises(ValueError, match="01_mask.png' has every pixel set"):
        DreamBoothEvalSet(root)[1]
    bench, _ = write_benchmark(tmp_path / "b")
    _save(bench / "masks" / "p1.png", np.zeros((40, 44), np.uint8))
    with pytest.raises(ValueError, match="masks/p1.png' is empty: no pixel is set"):
        BenchmarkSet(bench)[1]
    _save(bench / "target_masks" / "p0.png", np.zeros((40, 44), np.uint8))
    with pytest.raises(ValueError, match="target_masks/p0.png' is empty"):
        BenchmarkSet(bench)[0]


def test_benchmark_items_round_trip(tmp_path):
    root, arrays = write_benchmark(tmp_path)
    ds = BenchmarkSet(root)
    assert len(ds) == 2 and ds.has_targets
    for i, pid in enumerate(("p0", "p1")):
        item = ds[i]
        assert item["pair_id"] == pid
        np.testing.assert_array_equal(item["object_image"], arrays[pid]["rgba"][..., :3])
        np.testing.assert_array_equal(item["object_mask"], arrays[pid]["rgba"][..., 3] == 255)
        np.testing.assert_array_equal(item["scene_image"], arrays[pid]["scene"])
        np.testing.assert_array_equal(item["scene_mask"], arrays[pid]["mask"])
        np.testing.assert_array_equal(item["target_image"], arrays[pid]["target"])
        np.testing.assert_array_equal(item["target_mask"], arrays[pid]["mask"])


def test_benchmark_without_targets(tmp_path):
    ds = BenchmarkSet(write_benchmark(tmp_path, targets=False)[0])
    assert not ds.has_targets
    assert ds[0]["target_image"] is not None
    assert ds[1]["target_image"] is None and ds[1]["target_mask"] is None


def test_benchmark_errors(tmp_path):
    root, _ = write_benchmark(tmp_path / "b")
    lines = (root / "pairs.jsonl").read_text().splitlines()
    cases = [
        (lines[0] + "\n{broken", ValueError, r"pairs.jsonl:2: not valid JSON"),
        (lines[0] + "\n" + lines[0], ValueError, "pairs.jsonl:2: duplicate pair_id 'p0'"),
        ('{"pair_id": "x", "scene": "scenes/p0.png"}', ValueError, "pairs.jsonl:1: a pair needs the keys"),
        (
            lines[0].replace("refs/p0.png", "refs/nope.png"),
            FileNotFoundError,
            "pairs.jsonl:1: reference file '.*refs/nope.png' does not exist",
        ),
        ("\n", ValueError, "lists no pair"),
    ]
    for text, error, message in cases:
        (root / "pairs.jsonl").write_text(text)
        with pytest.raises(error, match=message):
            BenchmarkSet(root)
    (root / "pairs.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="has no pairs.jsonl"):
        BenchmarkSet(root)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        BenchmarkSet(tmp_path / "missing")
