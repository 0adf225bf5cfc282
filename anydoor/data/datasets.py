"""Data sets: training pairs from videos and masked images, and the evaluation sets.

Training sets (DESIGN.md "Data sources and adaptive timestep sampling") yield
`sample_to_tensors(prepare_training_pair(...))` plus `source` (the folder) and
`pair_id`; each has a `kind` that the timestep sampler reads:

- `VideoPairDataset`: two frames of one object (YouTube-VOS / MOSE layout);
- `ImageMaskDataset`: one image and one object mask, reference = target;
- `MixtureDataset`: several sources mixed by weight.

Evaluation sets yield raw images and masks for `prepare_inference_inputs`:

- `DreamBoothEvalSet`: the released code's object x scene layout (no target);
- `BenchmarkSet`: ``pairs.jsonl`` pairs, with true targets where known.

Item i draws its randomness from ``np.random.default_rng([seed, epoch, i])``,
so an item is the same whatever the worker, batch size or order. A pair that
fails a quality check (`PairRejected`) is replaced by another candidate (other
frames of the same object first, then other items), the reason is counted in
`rejections`, and after `max_tries` candidates the item fails with an error
naming the folder and the reasons: bad data surfaces instead of looping.
With DataLoader workers each worker process holds its own `rejections`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import PIL.Image
from torch.utils.data import Dataset

from anydoor.data.images import as_rgb_uint8, load_mask_file, load_rgba_object, read_label_map
from anydoor.data.pairs import KINDS, PairConfig, PairRejected, prepare_training_pair, sample_to_tensors

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_MAX_TRIES = 20


# --------------------------------------------------------------------------- file helpers


def _as_dir(path, name: str, layout: str) -> Path:
    if not isinstance(path, (str, PathLike)):
        raise TypeError(f"{name} must be a path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{name} {str(path)!r} is not a folder; expected {layout}")
    return path


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    with PIL.Image.open(path) as image:
        image.load()
        return as_rgb_uint8(image, name=str(path))


def _check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"image {str(image_path)!r} is {image.shape[:2]} but its mask {str(mask_path)!r} is {mask.shape}"
        )


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- training pairs


class _TrainingPairs(Dataset):
    """Shared seeding, retry and rejection bookkeeping of the training sets."""

    def __init__(self, source: Path, config: PairConfig, kind: str, seed: int, max_tries: int):
        if not isinstance(config, PairConfig):
            raise TypeError(f"config must be a PairConfig, got {type(config).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.source = source
        self.config = config
        self.kind = kind
        self.seed = _check_int("seed", seed, 0)
        self.max_tries = _check_int("max_tries", max_tries, 1)
        self.epoch = 0
        self.rejections: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Change every item's random draws (crops, augmentation, frame choice) for a new epoch."""
        self.epoch = _check_int("epoch", epoch, 0)

    def _candidate(self, j: int, rng: np.random.Generator) -> tuple:
        """(ref image, ref mask, target image, target mask, pair id) for item j; may raise PairRejected."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} {i!r}")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        i = int(i) % n
        rng = np.random.default_rng([self.seed, self.epoch, i])
        tried: Counter[str] = Counter()
        for attempt in range(self.max_tries):
            # Other draws of the same item first (a different frame pair or crop
            # often passes), then other items, so one bad object cannot stall training.
            j = i if attempt < (self.max_tries + 1) // 2 else int(rng.integers(n))
            try:
                ref_image, ref_mask, tar_image, tar_mask, pair_id = self._candidate(j, rng)
                sample = prepare_training_pair(
                    ref_image, ref_mask, tar_image, tar_mask, rng, config=self.config, kind=self.kind
                )
            except PairRejected as rejected:
                tried[rejected.reason] += 1
                self.rejections[rejected.reason] += 1
                continue
            return {**sample_to_tensors(sample), "source": str(self.source), "pair_id": pair_id}
        raise ValueError(
            f"{type(self).__name__} at {str(self.source)!r}: no valid pair for item {i} in {self.max_tries} tries "
            f"(rejections: {dict(sorted(tried.items()))}); check the masks or the quality limits of PairConfig"
        )


@dataclass(frozen=True)
class VideoObject:
    video: str
    object_id: int
    frames: tuple[str, ...]  # frame names where the object is annotated, in order


class VideoPairDataset(_TrainingPairs):
    """Pairs of frames of one object from a video segmentation set (YouTube-VOS / MOSE layout).

    Layout: ``root/JPEGImages/<video>/<frame>.jpg``, ``root/Annotations/<video>/<frame>.png``
    (palette PNGs whose values are object ids, 0 = background) and an optional
    ``root/meta.json`` in YouTube-VOS format (``{"videos": {video: {"objects":
    {"1": {"frames": [...]}}}}}``); without it the objects are found by reading
    every annotation once. Item = one (video, object); each draw takes two of
    its annotated frames whose positions differ by `min_frame_gap` to
    `max_frame_gap` (None: any), in random order (reference, target).

    The box checks follow the released video loaders, which reject a box
    only when both sides are out of bounds (DESIGN.md): `box_rule="both"` is
    applied to the given config (pass `box_rule="either"` for the generic rule).
    """

    layout = "root/JPEGImages/<video>/<frame>.jpg and root/Annotations/<video>/<frame>.png (optional root/meta.json)"

    def __init__(
        self,
        root: str | PathLike,
        config: PairConfig | None = None,
        kind: str = "video",
        min_frame_gap: int = 1,
        max_frame_gap: int | None = None,
        seed: int = 0,
        max_tries: int = DEFAULT_MAX_TRIES,
        box_rule: str = "both",
    ):
        root = _as_dir(root, "root", self.layout)
        if config is not None and not isinstance(config, PairConfig):
            raise TypeError(f"config must be a PairConfig, got {type(config).__name__}")
        config = dataclasses.replace(config or PairConfig(), box_rule=box_rule)
        super().__init__(root, config, kind, seed, max_tries)
        self.root = root
        self.min_frame_gap = _check_int("min_frame_gap", min_frame_gap, 0)
        self.max_frame_gap = (
            None if max_frame_gap is None else _check_int("max_frame_gap", max_frame_gap, max(self.min_frame_gap, 1))
        )
        image_root = _as_dir(root / "JPEGImages", "root", self.layout)
        mask_root = _as_dir(root / "Annotations", "root", self.layout)

        # Frames usable for training: an image and an annotation with the same name.
        self._files: dict[str, dict[str, tuple[Path, Path]]] = {}
        for video_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
            masks = mask_root / video_dir.name
            if not masks.is_dir():
                continue
            files = {stem: (path, masks / f"{stem}.png") for stem, path in _image_files(video_dir).items()}
            files = {stem: pair for stem, pair in files.items() if pair[1].is_file()}
            if files:
                self._files[video_dir.name] = files
        if not self._files:
            raise ValueError(
                f"root {str(root)!r} has no video with frames in both JPEGImages/ and Annotations/; "
                f"expected {self.layout}"
            )

        meta = root / "meta.json"
        objects = self._objects_from_meta(meta) if meta.is_file() else self._objects_from_masks()
        need = self.min_frame_gap + 1  # frames needed for one pair
        self.objects = [o for o in objects if len(o.frames) >= need]
        if not self.objects:
            raise ValueError(
                f"root {str(root)!r} has no object annotated in at least {need} frames "
                f"(min_frame_gap={self.min_frame_gap}); found {len(objects)} objects in {len(self._files)} videos"
            )

    def _objects_from_meta(self, path: Path) -> list[VideoObject]:
        try:
            videos = json.loads(path.read_text())["videos"]
            listed = {
                (video, int(oid)): [str(f) for f in info["frames"]]
                for video, entry in videos.items()
                for oid, info in entry["objects"].items()
            }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{str(path)!r} is not a YouTube-VOS meta.json "
                '({"videos": {video: {"objects": {"<id>": {"frames": [...]}}}}}): ' + f"{type(err).__name__}: {err}"
            ) from None
        objects = []
        for (video, oid), frames in sorted(listed.items()):
            files = self._files.get(video, {})
            # Meta files may list frames without an annotation (YouTube-VOS valid split): skip those.
            usable = tuple(sorted(f for f in set(frames) if f in files))
            objects.append(VideoObject(video, oid, usable))
        return objects

    def _objects_from_masks(self) -> list[VideoObject]:
        objects = []
        for video, files in self._files.items():
            seen: dict[int, list[str]] = {}
            for stem, (_, mask_path) in files.items():
                for oid in np.unique(read_label_map(mask_path)):
                    if oid != 0:
                        seen.setdefault(int(oid), []).append(stem)
            objects.extend(VideoObject(video, oid, tuple(sorted(frames))) for oid, frames in sorted(seen.items()))
        return objects

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(root={str(self.root)!r}, objects={len(self)}, videos={len(self._files)}, kind={self.kind!r})"

    def _frame_pair(self, n: int, rng: np.random.Generator) -> tuple[int, int]:
        """Positions (a, b) with min_frame_gap <= |a - b| <= max_frame_gap, uniform over a then over b."""
        lo, hi = self.min_frame_gap, n - 1 if self.max_frame_gap is None else min(self.max_frame_gap, n - 1)
        pos = np.arange(n)
        has_partner = (pos + lo <= n - 1) | (pos - lo >= 0)
        a = int(rng.choice(pos[has_partner]))
        gap = np.abs(pos - a)
        b = int(rng.choice(pos[(gap >= lo) & (gap <= hi)]))
        return a, b

    def _load(self, video: str, frame: str, object_id: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self._files[video][frame]
        image, labels = read_rgb(image_path), read_label_map(mask_path)
        _check_same_size(image, labels, image_path, mask_path)
        mask = labels == object_id
        if not mask.any():
            # Annotated as present in meta.json but absent from the mask (e.g. fully occluded).
            raise PairRejected("empty_mask", f"object {object_id} is absent from {str(mask_path)!r}")
        return image, mask

    def _candidate(self, j, rng):
        obj = self.objects[j]
        a, b = self._frame_pair(len(obj.frames), rng)
        ref_image, ref_mask = self._load(obj.video, obj.frames[a], obj.object_id)
        tar_image, tar_mask = self._load(obj.video, obj.frames[b], obj.object_id)
        return ref_image, ref_mask, tar_image, tar_mask, f"{obj.video}/{obj.object_id}/{obj.frames[a]}-{obj.frames[b]}"


class ImageMaskDataset(_TrainingPairs):
    """Single images with object masks (saliency sets, SAM, LVIS): reference = target = the image.

    Images in `image_dir` (jpg/png/...) pair with masks of the same stem in
    `mask_dir`; images without a mask are not used. `masks` says what a mask
    file holds:

    - "ids" (SAM, LVIS instance maps): ``<stem>.png`` of object ids (palette
      or grayscale; 0 = background; a {0, 255} or {0, 1} mask is one object);
      each draw picks one object. Soft-edged masks: pass `threshold` (e.g.
      128) to binarise them into one object instead.
    - "binary" (saliency sets, masks as users have them): one object per
      file, ``<stem>.png`` or ``.jpg``/``.jpeg`` in any mode, read by
      `anydoor.data.images.load_mask_file` (a colour channel above 128, a
      palette index not 0); a file it refuses is a rejected pair.
    """

    layout = "image_dir/<stem>.jpg|png and mask_dir/<stem>.png (masks='ids') or <stem>.png|jpg (masks='binary')"
    MASKS = ("ids", "binary")
    _BINARY_SUFFIXES = (".png", ".jpg", ".jpeg")

    def __init__(
        self,
        image_dir: str | PathLike,
        mask_dir: str | PathLike,
        config: PairConfig | None = None,
        kind: str = "image",
        seed: int = 0,
        max_tries: int = DEFAULT_MAX_TRIES,
        threshold: int | None = None,
        masks: str = "ids",
    ):
        if masks not in self.MASKS:
            raise ValueError(f"masks must be one of {self.MASKS}, got {masks!r}")
        if threshold is not None and masks != "ids":
            raise ValueError(f"threshold applies to masks='ids' only, got masks={masks!r}")
        image_dir = _as_dir(image_dir, "image_dir", self.layout)
        mask_dir = _as_dir(mask_dir, "mask_dir", self.layout)
        super().__init__(image_dir, PairConfig() if config is None else config, kind, seed, max_tries)
        self.image_dir, self.mask_dir, self.masks = image_dir, mask_dir, masks
        self.threshold = None if threshold is None else _check_int("threshold", threshold, 1)
        images = _image_files(image_dir)
        suffixes = (".png",) if masks == "ids" else self._BINARY_SUFFIXES
        masked = {stem: next((mask_dir / f"{stem}{x}" for x in suffixes if (mask_dir / f"{stem}{x}").is_file()), None)
                  for stem in images}
        self.items = [(stem, path, masked[stem]) for stem, path in images.items() if masked[stem] is not None]
        if not self.items:
            raise ValueError(
                f"no image in image_dir {str(image_dir)!r} ({len(images)} images) has a mask <stem>.png in "
                f"mask_dir {str(mask_dir)!r}; expected {self.layout}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_dir={str(self.image_dir)!r}, images={len(self)}, kind={self.kind!r})"

    def _candidate(self, j, rng):
        stem, image_path, mask_path = self.items[j]
        if self.masks == "binary":
            image = read_rgb(image_path)
            try:
                mask = load_mask_file(mask_path, "object", shape=image.shape[:2])
            except ValueError as err:
                raise PairRejected("bad_mask", str(err)) from None
            return image, mask, image, mask, f"{stem}/1"
        image, labels = read_rgb(image_path), read_label_map(mask_path)
        _check_same_size(image, labels, image_path, mask_path)
        if self.threshold is not None:
            labels = (labels >= self.threshold).astype(np.uint8)
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if ids.size == 0:
            raise PairRejected("empty_mask", f"mask {str(mask_path)!r} has no object")
        object_id = int(rng.choice(ids))
        mask = labels == object_id
        return image, mask, image, mask, f"{stem}/{object_id}"


class MixtureDataset(Dataset):
    """Several training sources mixed by weight (DESIGN.md "Data sources").

    Item i draws, from ``default_rng([seed, epoch, i])``, a source with
    probability proportional to its weight, then a uniform item of it. The
    item keeps its source's `kind` (read by adaptive timestep sampling).
    `length` is the number of items per epoch.
    """

    def __init__(self, sources: list[tuple[Dataset, float]], length: int, seed: int = 0):
        if not isinstance(sources, (list, tuple)) or not sources:
            raise ValueError(f"sources must be a non-empty list of (dataset, weight), got {sources!r}")
        weights = []
        for k, entry in enumerate(sources):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                raise TypeError(f"sources[{k}] must be a (dataset, weight) pair, got {entry!r}")
            dataset, weight = entry
            if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
                raise TypeError(f"sources[{k}] dataset must be a map-style Dataset, got {type(dataset).__name__}")
            if len(dataset) == 0:
                raise ValueError(f"sources[{k}] dataset {dataset!r} is empty")
            is_number = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
            if not (is_number and math.isfinite(weight) and weight > 0):
                raise ValueError(f"sources[{k}] weight must be a positive number, got {weight!r}")
            weights.append(float(weight))
        self.sources = [dataset for dataset, _ in sources]
        self.weights = np.asarray(weights) / sum(weights)
        self.length = _check_int("length", length, 1)
        self.seed = _check_int("seed", seed, 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New draws for every item, here and in the sources that have `set_epoch`."""
        self.epoch = _check_int("epoch", epoch, 0)
        for dataset in self.sources:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    @property
    def rejections(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for dataset in self.sources:
            total.update(getattr(dataset, "rejections", {}))
        return total

    def __len__(self) -> int:
        return self.length

    def source_index(self, i: int) -> tuple[int, int]:
        """(source, item within it) that item i draws."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} {i!r}")
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for MixtureDataset of length {self.length}")
        rng = np.random.default_rng([self.seed, self.epoch, int(i) % self.length])
        s = int(rng.choice(len(self.sources), p=self.weights))
        return s, int(rng.integers(len(self.sources[s])))

    def __getitem__(self, i: int) -> dict:
        s, j = self.source_index(i)
        return self.sources[s][j]


# --------------------------------------------------------------------------- evaluation sets


class DreamBoothEvalSet(Dataset):
    """Every (object, scene) pair of the released code's DreamBooth evaluation layout.

    Objects: RGBA PNGs (alpha > 128 = mask) in ``root/<objects_dir>``; scenes:
    ``<name>_GT.png`` (the scene image, despite the name) with
    ``<name>_mask.png`` (where to place the object; any mask file
    `load_mask_file` reads, e.g. the released examples' RGB PNGs) in
    ``root/<scenes_dir>``. The released examples call these folders ``FG`` and ``BG``. There is no
    true target. Items: dict(object_image, object_mask, scene_image,
    scene_mask, pair_id), objects outer, scenes inner.
    """

    layout = "root/objects/*.png (RGBA) and root/scenes/<name>_GT.png + <name>_mask.png"

    def __init__(self, root: str | PathLike, objects_dir: str = "objects", scenes_dir: str = "scenes"):
        self.root = _as_dir(root, "root", self.layout)
        object_root = _as_dir(self.root / objects_dir, "objects_dir", self.layout)
        scene_root = _as_dir(self.root / scenes_dir, "scenes_dir", self.layout)
        self.objects = sorted(p for p in object_root.iterdir() if p.is_file() and p.suffix.lower() == ".png")
        self.scenes = []
        for path in sorted(scene_root.glob("*_GT.png")):
            name = path.name[: -len("_GT.png")]
            mask = scene_root / f"{name}_mask.png"
            if not mask.is_file():
                raise FileNotFoundError(f"scene {str(path)!r} has no placement mask {str(mask)!r}")
            self.scenes.append((name, path, mask))
        if not self.objects or not self.scenes:
            raise ValueError(
                f"root {str(self.root)!r} has {len(self.objects)} object PNGs in {str(object_root)!r} and "
                f"{len(self.scenes)} scenes (*_GT.png) in {str(scene_root)!r}; both must be non-empty ({self.layout})"
            )

    def __len__(self) -> int:
        return len(self.objects) * len(self.scenes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, objects={len(self.objects)}, scenes={len(self.scenes)})"

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} {i!r}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {len(self)}")
        obj_path = self.objects[int(i) % len(self) // len(self.scenes)]
        name, scene_path, mask_path = self.scenes[int(i) % len(self.scenes)]
        object_image, object_mask = load_rgba_object(obj_path)
        scene_image = read_rgb(scene_path)
        scene_mask = load_mask_file(mask_path, role="scene", shape=scene_image.shape[:2])
        return {
            "pair_id": f"{obj_path.stem}__{name}",
            "object_image": object_image,
            "object_mask": object_mask,
            "scene_image": scene_image,
            "scene_mask": scene_mask,
        }


@dataclass(frozen=True)
class BenchmarkPair:
    pair_id: str
    reference: Path
    scene: Path
    placement_mask: Path
    target: Path | None
    target_mask: Path | None


class BenchmarkSet(Dataset):
    """Evaluation pairs listed in ``root/pairs.jsonl``, one JSON object per line.

    Keys: ``pair_id``, ``reference`` (RGBA PNG, alpha > 128 = mask), ``scene``,
    ``placement_mask``, optional ``target`` and ``target_mask`` (paths
    relative to root; masks are read by `load_mask_file`: L, RGB, RGBA or
    palette, PNG or JPEG). Items: dict(pair_id, object_image, object_mask,
    scene_image, scene_mask, target_image or None, target_mask or None).
    Every listed file is checked at construction.
    """

    layout = "root/pairs.jsonl: a JSON object a line (pair_id, reference, scene, placement_mask[, target, target_mask])"
    _required = ("pair_id", "reference", "scene", "placement_mask")

    def __init__(self, root: str | PathLike):
        self.root = _as_dir(root, "root", self.layout)
        listing = self.root / "pairs.jsonl"
        if not listing.is_file():
            raise FileNotFoundError(f"root {str(self.root)!r} has no pairs.jsonl; expected {self.layout}")
        self.pairs: list[BenchmarkPair] = []
        seen = set()
        for n, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{listing}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from None
            if not isinstance(record, dict) or any(k not in record for k in self._required):
                raise ValueError(f"{where}: a pair needs the keys {self._required}, got {line.strip()[:200]!r}")
            if "target_mask" in record and "target" not in record:
                raise ValueError(f"{where}: target_mask given without target")
            pair_id = str(record["pair_id"])
            if pair_id in seen:
                raise ValueError(f"{where}: duplicate pair_id {pair_id!r}")
            seen.add(pair_id)
            paths = {}
            for key in ("reference", "scene", "placement_mask", "target", "target_mask"):
                if record.get(key) is None:
                    paths[key] = None
                    continue
                path = self.root / str(record[key])
                if not path.is_file():
                    raise FileNotFoundError(f"{where}: {key} file {str(path)!r} does not exist")
                paths[key] = path
            self.pairs.append(BenchmarkPair(pair_id=pair_id, **paths))
        if not self.pairs:
            raise ValueError(f"{str(listing)!r} lists no pair; expected {self.layout}")

    @property
    def has_targets(self) -> bool:
        """True when every pair has a true target image (PSNR/SSIM can be computed)."""
        return all(p.target is not None for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, pairs={len(self)}, has_targets={self.has_targets})"

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} {i!r}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {len(self)}")
        pair = self.pairs[int(i)]
        object_image, object_mask = load_rgba_object(pair.reference)
        scene_image = read_rgb(pair.scene)
        shape = scene_image.shape[:2]
        scene_mask = load_mask_file(pair.placement_mask, role="scene", shape=shape)
        target_image = target_mask = None
        if pair.target is not None:
            target_image = read_rgb(pair.target)
            if target_image.shape != scene_image.shape:
                raise ValueError(
                    f"target {str(pair.target)!r} is {target_image.shape} but scene {str(pair.scene)!r} "
                    f"is {scene_image.shape}"
                )
        if pair.target_mask is not None:
            target_mask = load_mask_file(pair.target_mask, role="mask", shape=shape)
        return {
            "pair_id": pair.pair_id,
            "object_image": object_image,
            "object_mask": object_mask,
            "scene_image": scene_image,
            "scene_mask": scene_mask,
            "target_image": target_image,
            "target_mask": target_mask,
        }
