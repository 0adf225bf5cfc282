"""Synthetic AnyDoor data: the embedded default's training and evaluation sets (DESIGN.md section 4).

No real data set can be downloaded where this project is built, so the
embedded default trains and evaluates on images rendered here. Each object is
an identity (a shape, a texture and a palette, drawn once from its own seed)
that moves, turns, scales and changes lighting between frames over varied
backgrounds, so a pair of frames asks the same question a YouTube-VOS pair
does: keep the identity, change the pose and the lighting.

`write_synthetic_dataset` writes three splits in the layouts the real loaders
read (`anydoor.data.datasets`):

- ``videos/``: YouTube-VOS layout (``JPEGImages/<video>/<frame>.jpg``,
  ``Annotations/<video>/<frame>.png`` palette PNGs holding object ids,
  ``meta.json``), one object per video or two in different halves;
- ``images/``: ``images/<stem>.jpg`` + ``masks/<stem>.png`` (0/255), one object
  each (reference = target, like the saliency sets);
- ``benchmark/``: ``pairs.jsonl`` with an RGBA reference (the object in
  another pose and lighting, on another background, alpha = its mask), the
  scene without the object, the placement mask, and the true target: the
  same scene rendered with the object, so the scene and the target differ
  exactly on the target mask.

``manifest.json`` lists the object ids of each split: the benchmark's objects
(ids and texture seeds) never appear in training (DESIGN.md section 2,
"Zero-shot"). Same seed, same bytes.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass, field, replace
from functools import partial
from os import PathLike
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageDraw

from anydoor.data.captions import colour_family

SHAPES = ("ellipse", "rounded_rect", "polygon", "blob")
TEXTURES = ("stripes", "checks", "dots", "glyphs", "patches")
BACKGROUNDS = ("gradient", "noise", "stripes", "shapes")

# Every shape fits the unit disc and is at least ~1.1 radii wide, so an object
# of radius r (as a fraction of the frame side) has a box of at least 1.1 r
# per side and an area of at most pi r^2. With r in [0.16, 0.28] the box is
# >= 17 % of each side (quality check: 10 %), the area ratio is in
# [0.04, 0.25] (check: [0.01, 0.64]) and the box expanded by 1.2 stays under
# 0.67 of the frame (check: 0.8), so the pair checks accept almost every pair.
RADIUS_ONE_OBJECT = (0.16, 0.28)
# Two objects each keep to one half of the frame, so their masks never overlap.
RADIUS_TWO_OBJECTS = (0.16, 0.22)
TWO_OBJECT_PROB = 0.3  # share of videos with a second object (id 2)
BENCHMARK_TURN = (30.0, 150.0)  # degrees between a benchmark reference and its target, either way
VIDEO_TURN = 60.0  # a video's object turns by up to this many degrees (either way) over its frames
# Limits write_synthetic_dataset checks every rendered mask against (brief of issue 2).
AREA_RATIO_LIMITS = (0.02, 0.5)
MIN_BOX_RATIO = 0.15

JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
FRAME_STRIDE = 5  # frame names step by 5, like YouTube-VOS's annotated frames
# DAVIS / YouTube-VOS annotation palette for ids 0..2 (background, object 1, object 2).
ANNOTATION_PALETTE = (0, 0, 0, 128, 0, 0, 0, 128, 0)


@dataclass(eq=False)
class SyntheticObject:
    """An object identity: its canonical sprite (RGB texture + shape alpha).

    The texture covers the whole sprite (not just the shape), so bilinear
    warping never blends in a foreign colour at the object's edge.
    """

    object_id: int
    shape: str
    texture: str
    palette: tuple[tuple[int, int, int], ...]  # body colour, its shades, then the marker colour
    seed: tuple[int, ...]  # spawn key of the SeedSequence the identity was drawn from
    rgb: np.ndarray = field(repr=False)  # (R, R, 3) float32 in [0, 1]
    alpha: np.ndarray = field(repr=False)  # (R, R) float32 in {0, 1}

    @property
    def colour(self) -> str:
        """The body's colour family (`anydoor.data.captions.COLOUR_FAMILIES`), as a caption names it."""
        return colour_family(self.palette[0])

    @property
    def marker(self) -> str:
        """The marker's colour family."""
        return colour_family(self.palette[-1])

    def describe(self) -> dict:
        palette = [list(c) for c in self.palette]
        return {
            "shape": self.shape, "texture": self.texture, "colour": self.colour, "marker": self.marker,
            "palette": palette, "seed": list(self.seed),
        }


@dataclass(frozen=True)
class Pose:
    """Where and how an object appears in a frame (pixels and degrees)."""

    cx: float
    cy: float
    radius: float  # radius of the object's unit disc in pixels
    angle: float  # counter-clockwise rotation in degrees
    brightness: float
    contrast: float
    shade: tuple[float, float]  # linear lighting gradient per object radius (x, y)


def _interpolate(a: Pose, b: Pose, t: float) -> Pose:
    lerp = lambda x, y: (1.0 - t) * x + t * y  # noqa: E731
    return Pose(
        cx=lerp(a.cx, b.cx),
        cy=lerp(a.cy, b.cy),
        radius=lerp(a.radius, b.radius),
        angle=lerp(a.angle, b.angle),
        brightness=lerp(a.brightness, b.brightness),
        contrast=lerp(a.contrast, b.contrast),
        shade=(lerp(a.shade[0], b.shade[0]), lerp(a.shade[1], b.shade[1])),
    )


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _object_palette(rng: np.random.Generator, n: int) -> tuple[tuple[int, int, int], ...]:
    """A body colour, n - 1 darker or lighter shades of its hue for the texture, and a marker colour.

    Like most real objects (a red mug, a yellow toy), each object is one
    colour family with a pattern in its shades and one small detail of
    another hue (the marker). The pattern stays visible to the high-frequency
    map: shades differ from the body by 0.2-0.35 in value (50-90 levels, a
    Sobel response far above its threshold of 50). An earlier palette drew
    the texture colours far apart in hue, alternating light and dark; their
    mean was a grey that no pixel had, so where the inputs do not fix the
    target's pose, a sharp object in the wrong pose scored like pasting the
    reference, which an untrained model's grey texture beat on PSNR
    (docs/ARCHITECTURE.md, "What the ground-truth metrics can say").
    """
    h, s, v = rng.random(), rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95)
    colours = [_hsv(h, s, v)]
    for i in range(1, n):
        step = rng.uniform(0.2, 0.35)
        # The first shade is darker; the second lighter on a darker body, else darker too.
        lighter = i % 2 == 0 and v < 0.7
        colours.append(_hsv(h + rng.uniform(-0.04, 0.04), s, float(np.clip(v + (step if lighter else -step), 0.2, 1.0))))
    colours.append(_hsv(h + rng.uniform(0.35, 0.65), 1.0, 1.0))
    return tuple(colours)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    # Backgrounds stay less saturated than objects, like most real scenes.
    return np.array(_hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.85)), np.float32) / 255.0


# --------------------------------------------------------------------------- objects


def _shape_alpha(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shape inside the unit disc, on canonical coordinates u, v in [-1, 1]."""
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    if shape == "ellipse":
        b = rng.uniform(0.65, 1.0)
        return (u / 0.98) ** 2 + (v / (0.98 * b)) ** 2 <= 1.0
    if shape == "rounded_rect":
        p, b = rng.uniform(3.0, 6.0), rng.uniform(0.65, 1.0)
        # Scale the superellipse so its farthest point (a corner) touches radius 0.98.
        t = np.linspace(0.0, 2.0 * np.pi, 721)
        bu = np.abs(np.cos(t)) ** (2.0 / p)
        bv = b * np.abs(np.sin(t)) ** (2.0 / p)
        k = 0.98 / np.hypot(bu, bv).max()
        return np.abs(u / k) ** p + np.abs(v / (k * b)) ** p <= 1.0
    if shape == "polygon":
        n = int(rng.integers(5, 10))
        angles = 2.0 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
        radii = 0.98 * rng.uniform(0.7, 1.0, n)
        res = u.shape[0]
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        pts = np.round((pts + 1.0) * 0.5 * (res - 1) * 16).astype(np.int32)  # 4 fractional bits
        canvas = np.zeros(u.shape, np.uint8)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
        return canvas.astype(bool)
    if shape == "blob":
        ks = np.arange(2, 5)
        amp, phase = rng.uniform(0.0, 0.1, 3), rng.uniform(0.0, 2.0 * np.pi, 3)
        r = 1.0 + (amp[:, None, None] * np.cos(ks[:, None, None] * theta + phase[:, None, None])).sum(0)
        return rho <= 0.98 * r / (1.0 + amp.sum())
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _texture_index(texture: str, u: np.ndarray, v: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Palette index per sprite pixel for a texture of n colours (frequencies in cycles per unit radius)."""
    a = rng.uniform(0.0, np.pi)
    ur, vr = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    if texture == "stripes":
        k = rng.uniform(2.0, 4.0)
        return np.floor((ur + 2.0) * k).astype(np.int64) % n
    if texture == "checks":
        k = rng.uniform(1.5, 3.0)
        return (np.floor((ur + 2.0) * k) + np.floor((vr + 2.0) * k)).astype(np.int64) % n
    if texture == "dots":
        k = rng.uniform(1.2, 2.2)
        gu, gv = (ur + 2.0) * k + rng.random(), (vr + 2.0) * k + rng.random()
        iu, iv = np.floor(gu), np.floor(gv)
        inside = np.hypot(gu - iu - 0.5, gv - iv - 0.5) < rng.uniform(0.25, 0.35)
        return np.where(inside, 1 + (iu + iv).astype(np.int64) % (n - 1), 0)
    if texture == "glyphs":
        # A few random 4x4 "letters", one per cell with a one-pixel margin (6x6 grid).
        glyphs = rng.random((3, 4, 4)) < 0.5
        glyphs[:, 1, 1] = True  # never a blank glyph
        assign = rng.integers(0, 3, (8, 8))
        k = rng.uniform(0.6, 1.0)
        cu, cv = (u + 1.0) * k, (v + 1.0) * k
        iu, iv = np.floor(cu).astype(np.int64), np.floor(cv).astype(np.int64)
        gx, gy = np.floor((cu - iu) * 6).astype(np.int64) - 1, np.floor((cv - iv) * 6).astype(np.int64) - 1
        valid = (gx >= 0) & (gx < 4) & (gy >= 0) & (gy < 4)
        which = assign[iv % 8, iu % 8]
        on = valid & glyphs[which, np.clip(gy, 0, 3), np.clip(gx, 0, 3)]
        return np.where(on, 1 + which % (n - 1), 0)
    if texture == "patches":
        centres = rng.uniform(-1.0, 1.0, (int(rng.integers(4, 9)), 2))
        d = np.hypot(u[..., None] - centres[:, 0], v[..., None] - centres[:, 1])
        return np.argmin(d, axis=-1) % n
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


def make_object(object_id: int, seed: np.random.SeedSequence, resolution: int) -> SyntheticObject:
    """Draw an object identity (shape, texture, palette) from its own seed and render its sprite.

    A small off-centre marker disc breaks the texture's symmetry so that the
    object's rotation is visible.
    """
    rng = np.random.default_rng(seed)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    n = int(rng.integers(2, 4))
    palette = _object_palette(rng, n)
    c = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
    u, v = np.meshgrid(c, c)
    alpha = _shape_alpha(shape, u, v, rng)
    index = _texture_index(texture, u, v, n, rng)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    marker = np.hypot(u - 0.5 * np.cos(phi), v - 0.5 * np.sin(phi)) < 0.2
    index = np.where(marker, n, index)
    colours = np.asarray(palette, np.float32) / 255.0
    return SyntheticObject(
        object_id=object_id,
        shape=shape,
        texture=texture,
        palette=palette,
        seed=tuple(int(k) for k in seed.spawn_key),
        rgb=colours[index],
        alpha=alpha.astype(np.float32),
    )


# --------------------------------------------------------------------------- backgrounds


def make_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A varied background (gradient, smooth noise, soft stripes or blurred shapes), uint8 RGB."""
    return draw_background(size, rng)[0]


def draw_background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """`make_background`'s image and its kind (one of `BACKGROUNDS`, what a caption names)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return render_background(kind, size, rng), kind


def render_background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background of the given kind (one of `BACKGROUNDS`), uint8 RGB."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"kind must be one of {BACKGROUNDS}, got {kind!r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    a = rng.uniform(0.0, 2.0 * np.pi)
    along = xx * np.cos(a) + yy * np.sin(a)
    if kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        image = c0 * (1.0 - t[..., None]) + c1 * t[..., None]
    elif kind == "noise":
        k = int(rng.integers(3, 7))
        # Mostly brightness variation with a little colour, like out-of-focus clutter.
        coarse = rng.normal(0.0, 0.1, (k, k, 1)) + rng.normal(0.0, 0.04, (k, k, 3))
        coarse = coarse.astype(np.float32)
        image = c0 + cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2.0 * np.pi * rng.uniform(2.0, 6.0) * along)
        image = c0 * (1.0 - t[..., None]) + c1 * t[..., None]
    else:
        image = np.ascontiguousarray(np.broadcast_to(c0, (size, size, 3)), dtype=np.float32)
        for _ in range(int(rng.integers(5, 12))):
            colour = tuple(float(x) for x in _muted_colour(rng))
            centre = tuple(int(x) for x in rng.integers(0, size, 2))
            extent = int(rng.integers(size // 12 + 1, size // 4 + 2))
            if rng.random() < 0.5:
                cv2.circle(image, centre, extent, colour, thickness=-1)
            else:
                far = (centre[0] + extent, centre[1] + int(rng.integers(1, 2 * extent)))
                cv2.rectangle(image, centre, far, colour, thickness=-1)
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=size / 40.0)
    # A little pixel noise, like sensor noise, so flat regions are not perfectly flat.
    image = image + rng.normal(0.0, 0.015, (size, size, 3)).astype(np.float32)
    return _to_uint8(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- rendering


def render_object(obj: SyntheticObject, pose: Pose, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The object alone in a size x size frame at `pose`: (uint8 RGB, bool mask).

    Compositing with the mask (not alpha blending) keeps the pixels outside
    the mask exactly those of the background.
    """
    res = obj.rgb.shape[0]
    centre = (res - 1) / 2.0
    m = cv2.getRotationMatrix2D((centre, centre), pose.angle, pose.radius / (res / 2.0))
    m[:, 2] += (pose.cx - centre, pose.cy - centre)
    rgb = cv2.warpAffine(obj.rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(obj.alpha, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    shade = 1.0 + (pose.shade[0] * (xx - pose.cx) + pose.shade[1] * (yy - pose.cy)) / pose.radius
    lit = ((rgb - 0.5) * pose.contrast + 0.5) * pose.brightness * shade[..., None]
    return _to_uint8(lit), alpha > 0.5


def composite(background: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Paint (rgb, mask) layers over a background in order: (frame, uint8 label map with ids 1..)."""
    frame = background.copy()
    labels = np.zeros(background.shape[:2], np.uint8)
    for i, (rgb, mask) in enumerate(layers, start=1):
        frame[mask] = rgb[mask]
        labels[mask] = i
    return frame, labels


def sample_pose(
    rng: np.random.Generator,
    size: int,
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    radius_range: tuple[float, float] = RADIUS_ONE_OBJECT,
    radius: float | None = None,
) -> Pose:
    """A pose whose unit disc lies inside region (x0, y0, x1, y1, fractions of the side)."""
    if radius is None:
        radius = rng.uniform(*radius_range) * size
    x0, y0, x1, y1 = (r * size for r in region)
    return Pose(
        cx=rng.uniform(x0 + radius, x1 - radius),
        cy=rng.uniform(y0 + radius, y1 - radius),
        radius=radius,
        angle=rng.uniform(0.0, 360.0),
        brightness=rng.uniform(0.75, 1.2),
        contrast=rng.uniform(0.8, 1.2),
        shade=tuple(rng.uniform(-0.2, 0.2, 2)),
    )


def _trajectory(rng: np.random.Generator, size: int, frames: int, region, radius_range) -> list[Pose]:
    """Poses along a straight path: moves, turns up to `VIDEO_TURN` degrees, scales and relights."""
    lo, hi = (r * size for r in radius_range)
    r0 = rng.uniform(lo, hi)
    r1 = float(np.clip(r0 * rng.uniform(0.8, 1.25), lo, hi))
    # Both end points keep the larger disc inside the region; the region is
    # convex, so every interpolated pose (with a smaller or equal disc) does too.
    start = replace(sample_pose(rng, size, region, radius_range, radius=max(r0, r1)), radius=r0)
    end = sample_pose(rng, size, region, radius_range, radius=max(r0, r1))
    end = replace(end, radius=r1, angle=start.angle + rng.uniform(-VIDEO_TURN, VIDEO_TURN))
    return [_interpolate(start, end, t / (frames - 1)) for t in range(frames)]


def _mask_ok(mask: np.ndarray) -> bool:
    """The brief's size limits: area ratio in [0.02, 0.5], box >= 15 % of each side."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return False
    area = ys.size / (h * w)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    area_ok = AREA_RATIO_LIMITS[0] <= area <= AREA_RATIO_LIMITS[1]
    return area_ok and box_h >= MIN_BOX_RATIO * h and box_w >= MIN_BOX_RATIO * w


def _render_checked(rng, size, obj, propose, what: str, max_tries: int = 50):
    """Draw poses with `propose(rng)` until every rendered mask meets the size limits."""
    for _ in range(max_tries):
        poses = propose(rng)
        rendered = [render_object(obj, p, size) for p in poses]
        if all(_mask_ok(mask) for _, mask in rendered):
            return poses, rendered
    # The radius ranges make this unreachable for size >= 32; fail loudly if a change breaks that.
    raise RuntimeError(
        f"{what}: no pose met the size limits in {max_tries} tries (object {obj.object_id}, size {size})"
    )


# --------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray, palette: tuple[int, ...] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:
        image = PIL.Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        image.putpalette(list(palette))
    else:
        image = PIL.Image.fromarray(array)
    image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 4:4:4 keeps the chroma of small textured objects; fixed settings keep the bytes reproducible.
    PIL.Image.fromarray(rgb).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")


@dataclass(frozen=True)
class SyntheticDataset:
    """What `write_synthetic_dataset` wrote (returned to the CLI, which prints `describe()`)."""

    root: Path
    seed: int
    size: int
    videos: int
    frames: int
    images: int
    benchmark_pairs: int
    objects: dict[str, list[int]]  # object ids per split
    files: int
    bytes: int

    @property
    def video_root(self) -> Path:
        return self.root / "videos"

    @property
    def image_dir(self) -> Path:
        return self.root / "images" / "images"

    @property
    def mask_dir(self) -> Path:
        return self.root / "images" / "masks"

    @property
    def benchmark_root(self) -> Path:
        return self.root / "benchmark"

    def describe(self) -> str:
        n = {split: len(ids) for split, ids in self.objects.items()}
        return "\n".join(
            [
                f"synthetic data set in {self.root} (seed {self.seed}, {self.size}x{self.size} px)",
                f"  videos/     {self.videos} videos x {self.frames} frames, {n['videos']} objects (YouTube-VOS)",
                f"  images/     {self.images} images with masks, {n['images']} objects",
                f"  benchmark/  {self.benchmark_pairs} pairs with true targets, {n['benchmark']} unseen objects",
                f"  {self.files} files, {self.bytes / 1e6:.2f} MB; object ids per split in manifest.json",
            ]
        )


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class _ObjectRegistry:
    """Hands out object ids in order and records each object in the manifest."""

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.splits: dict[str, dict[str, list[int]]] = {"videos": {}, "images": {}, "benchmark": {}}
        self.objects: dict[str, dict] = {}

    def new(self, split: str, key: str, seed: np.random.SeedSequence) -> SyntheticObject:
        obj = make_object(len(self.objects) + 1, seed, self.resolution)
        self.splits[split].setdefault(key, []).append(obj.object_id)
        self.objects[str(obj.object_id)] = {"split": split, **obj.describe()}
        return obj

    def ids(self, split: str) -> list[int]:
        return sorted(i for ids in self.splits[split].values() for i in ids)


def _write_videos(root: Path, seeds, frames: int, size: int, registry: _ObjectRegistry) -> None:
    """YouTube-VOS layout: JPEG frames, palette annotations, meta.json."""
    meta = {"videos": {}}
    names = [f"{t * FRAME_STRIDE:05d}" for t in range(frames)]
    for v, item_seed in enumerate(seeds):
        vid = f"v{v:04d}"
        *object_seeds, rng_seed = item_seed.spawn(3)
        rng = np.random.default_rng(rng_seed)
        if rng.random() < TWO_OBJECT_PROB:
            # One object per half (left/right or top/bottom): masks never overlap.
            halves = [(0, 0, 0.5, 1), (0.5, 0, 1, 1)] if rng.random() < 0.5 else [(0, 0, 1, 0.5), (0, 0.5, 1, 1)]
            specs = [(half, RADIUS_TWO_OBJECTS) for half in halves]
        else:
            specs = [((0, 0, 1, 1), RADIUS_ONE_OBJECT)]
        background = make_background(size, rng)
        tracks, objects = [], []
        for (region, radius_range), object_seed in zip(specs, object_seeds):
            obj = registry.new("videos", vid, object_seed)
            propose = partial(_trajectory, size=size, frames=frames, region=region, radius_range=radius_range)
            tracks.append(_render_checked(rng, size, obj, propose, f"video {vid}")[1])
            objects.append(obj)
        for t, name in enumerate(names):
            frame, labels = composite(background, [track[t] for track in tracks])
            _write_jpeg(root / "JPEGImages" / vid / f"{name}.jpg", frame)
            _write_png(root / "Annotations" / vid / f"{name}.png", labels, palette=ANNOTATION_PALETTE)
        listed = {str(k): {"category": f"{o.shape}/{o.texture}", "frames": names} for k, o in enumerate(objects, 1)}
        meta["videos"][vid] = {"objects": listed}
    _write_json(root / "meta.json", meta)


def _write_images(root: Path, seeds, size: int, registry: _ObjectRegistry) -> None:
    """images/<stem>.jpg + masks/<stem>.png (0/255): one object each, reference = target."""
    for i, item_seed in enumerate(seeds):
        stem = f"img{i:04d}"
        object_seed, rng_seed = item_seed.spawn(2)
        rng = np.random.default_rng(rng_seed)
        obj = registry.new("images", stem, object_seed)
        _, [(rgb, mask)] = _render_checked(rng, size, obj, lambda g: [sample_pose(g, size)], f"image {stem}")
        frame, _ = composite(make_background(size, rng), [(rgb, mask)])
        _write_jpeg(root / "images" / f"{stem}.jpg", frame)
        _write_png(root / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)


def _write_benchmark(root: Path, seeds, size: int, registry: _ObjectRegistry) -> None:
    """pairs.jsonl: unseen objects; the scene and the true target come from one render."""
    lines = []
    for j, item_seed in enumerate(seeds):
        pair_id = f"pair{j:04d}"
        object_seed, rng_seed = item_seed.spawn(2)
        rng = np.random.default_rng(rng_seed)
        obj = registry.new("benchmark", pair_id, object_seed)
        (target_pose,), [(rgb, mask)] = _render_checked(
            rng, size, obj, lambda g: [sample_pose(g, size)], f"benchmark {pair_id}"
        )
        scene = make_background(size, rng)
        target, _ = composite(scene, [(rgb, mask)])

        def reference_pose(g: np.random.Generator) -> list[Pose]:
            # Another pose: turned by 30..150 degrees either way, elsewhere, other lighting.
            turn = g.uniform(*BENCHMARK_TURN) * (1 if g.random() < 0.5 else -1)
            return [replace(sample_pose(g, size), angle=target_pose.angle + turn)]

        _, [(ref_rgb, ref_mask)] = _render_checked(rng, size, obj, reference_pose, f"benchmark {pair_id} reference")
        # The reference keeps its own background under alpha 0, so the "background
        # not removed" arm of the ID-extractor ablation has something to see.
        reference, _ = composite(make_background(size, rng), [(ref_rgb, ref_mask)])
        mask_png = mask.astype(np.uint8) * 255
        arrays = {
            # The placement mask is the true target mask (not dilated): shape-controlled insertion.
            "reference": ("refs", np.dstack([reference, ref_mask.astype(np.uint8) * 255])),
            "scene": ("scenes", scene),
            "placement_mask": ("placement_masks", mask_png),
            "target": ("targets", target),
            "target_mask": ("target_masks", mask_png),
        }
        record = {"pair_id": pair_id}
        for key, (folder, array) in arrays.items():
            record[key] = f"{folder}/{pair_id}.png"
            _write_png(root / record[key], array)
        lines.append(json.dumps(record, sort_keys=True))
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))


def write_synthetic_dataset(
    out: str | PathLike,
    videos: int = 24,
    frames: int = 6,
    size: int = 96,
    images: int | None = None,
    benchmark_pairs: int = 16,
    seed: int = 0,
) -> SyntheticDataset:
    """Write the synthetic videos, images and benchmark (module docstring) into a new folder `out`.

    `images=None` writes as many single images as videos. All randomness
    comes from children of `np.random.SeedSequence(seed)`, one per split and
    one per item, and the encoders' settings are fixed: the same arguments
    give the same bytes. Object ids: videos first, then images, then the
    benchmark, so the splits never share one.
    """
    videos = _check_count("videos", videos, 1)
    frames = _check_count("frames", frames, 2)
    size = _check_count("size", size, 32)
    images = videos if images is None else _check_count("images", images, 0)
    benchmark_pairs = _check_count("benchmark_pairs", benchmark_pairs, 0)
    seed = _check_count("seed", seed, 0)
    if not isinstance(out, (str, PathLike)):
        raise TypeError(f"out must be a path, got {type(out).__name__} {out!r}")
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"out {str(root)!r} exists and is not an empty folder; choose a new folder")

    # The sprite matches the largest on-screen object, so warping only ever shrinks it.
    registry = _ObjectRegistry(resolution=max(32, 2 * math.ceil(RADIUS_ONE_OBJECT[1] * size)))
    video_seeds, image_seeds, benchmark_seeds = np.random.SeedSequence(seed).spawn(3)
    _write_videos(root / "videos", video_seeds.spawn(videos), frames, size, registry)
    _write_images(root / "images", image_seeds.spawn(images), size, registry)
    _write_benchmark(root / "benchmark", benchmark_seeds.spawn(benchmark_pairs), size, registry)
    manifest = {"seed": seed, "size": size, "splits": registry.splits, "objects": registry.objects}
    _write_json(root / "manifest.json", manifest)

    written = [p for p in root.rglob("*") if p.is_file()]
    return SyntheticDataset(
        root=root,
        seed=seed,
        size=size,
        videos=videos,
        frames=frames,
        images=images,
        benchmark_pairs=benchmark_pairs,
        objects={split: registry.ids(split) for split in registry.splits},
        files=len(written),
        bytes=sum(p.stat().st_size for p in written),
    )


def render_sample_grid(out_dir: str | PathLike, path: str | PathLike, rows: int = 4, scale: int = 2) -> Path:
    """Save a PNG grid of a written synthetic data set (for the README).

    Row r: benchmark pair r's reference (alpha over a checkerboard), the first
    and last frames of video r, and benchmark pair r's scene and true target.
    """
    root = Path(out_dir)
    pairs_file = root / "benchmark" / "pairs.jsonl"
    video_dir = root / "videos" / "JPEGImages"
    if not pairs_file.is_file() or not video_dir.is_dir():
        raise FileNotFoundError(
            f"out_dir {str(root)!r} is not a synthetic data set (expected benchmark/pairs.jsonl and videos/JPEGImages/)"
        )
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
    vids = sorted(p for p in video_dir.iterdir() if p.is_dir())
    rows = min(rows, len(pairs), len(vids))
    if rows < 1:
        raise ValueError(f"out_dir {str(root)!r} has no benchmark pair or no video to show")
    load = lambda p: np.asarray(PIL.Image.open(p))  # noqa: E731

    def on_checkerboard(rgba: np.ndarray) -> np.ndarray:
        h, w = rgba.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        board = np.where(((yy // 8 + xx // 8) % 2 == 0)[..., None], 235, 200).astype(np.uint8)
        return np.where(rgba[..., 3:] >= 128, rgba[..., :3], board)

    titles = ("reference", "video frame", "later frame", "scene", "true target")
    cells = []
    for r in range(rows):
        frames = sorted(vids[r].glob("*.jpg"))
        pair = pairs[r]
        cells.append(
            [
                on_checkerboard(load(root / "benchmark" / pair["reference"])),
                load(frames[0]),
                load(frames[-1]),
                load(root / "benchmark" / pair["scene"]),
                load(root / "benchmark" / pair["target"]),
            ]
        )
    side = cells[0][0].shape[0] * scale
    gap, header = 4, 16
    grid = PIL.Image.new("RGB", (len(titles) * (side + gap) + gap, header + rows * (side + gap) + gap), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((gap + c * (side + gap), 2), title, fill=(0, 0, 0))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            tile = PIL.Image.fromarray(np.ascontiguousarray(cell)).resize((side, side), PIL.Image.Resampling.NEAREST)
            grid.paste(tile, (gap + c * (side + gap), header + gap + r * (side + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path
