"""What the collage shows inside the target box: the paper's Table 5 ablation.

Each variant maps the background-removed reference (HxWx3 uint8, and its
mask as an HxW float in [0, 1]: pair preparation's reference mask is grey at
its edge, DESIGN.md 1d) to an HxWx3 uint8 map that is pasted into the target
box (DESIGN.md section 1b, "Detail-map variants"). All share the signature
`(image, mask, rng)`; only `noise` and `shuffle` use the generator.
"""

from __future__ import annotations

import numpy as np

from anydoor.data.high_frequency import high_frequency_map
from anydoor.data.images import as_rgb_uint8, as_soft_mask

# Noise level of the released noise helper, in [-1, 1] units: x * 0.958 + e * 0.287.
NOISE_SIGNAL_SCALE = 0.958
NOISE_SCALE = 0.287
SHUFFLE_GRID = 4


def hf_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The high-frequency map (the paper's choice)."""
    return high_frequency_map(image, mask)


def rgb_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The reference itself ("original image"): best identity, but copies the pose."""
    return image.copy()


def noise_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference with Gaussian noise inside the object mask: x * 0.958 + e * 0.287 in [-1, 1] units.

    e ~ N(0, 1) is drawn for every pixel (so the draw does not depend on the
    mask); the result is clipped to [-1, 1] and rounded back to uint8. Inside
    means mask > 0.5, the threshold the high-frequency map reads a grey mask with.
    """
    x = image.astype(np.float32) / 127.5 - 1.0
    noisy = x * NOISE_SIGNAL_SCALE + rng.standard_normal(x.shape, dtype=np.float32) * NOISE_SCALE
    out = np.round((np.clip(noisy, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.where(mask[:, :, None] > 0.5, out, image)


def shuffle_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference cut into a 4x4 grid of equal patches, randomly permuted.

    Patches are floor(H / 4) x floor(W / 4); when a side is not divisible by
    4, the remaining (< 4 px) rows/columns at the bottom/right stay in place,
    so the output is always a permutation of the input's pixels.
    """
    g = SHUFFLE_GRID
    ph, pw = image.shape[0] // g, image.shape[1] // g
    if ph == 0 or pw == 0:
        raise ValueError(f"image of size {image.shape[:2]} is too small to cut into a {g}x{g} grid")
    patches = image[: g * ph, : g * pw].reshape(g, ph, g, pw, -1).transpose(0, 2, 1, 3, 4).reshape(g * g, ph, pw, -1)
    shuffled = patches[rng.permutation(g * g)]
    out = image.copy()
    out[: g * ph, : g * pw] = shuffled.reshape(g, g, ph, pw, -1).transpose(0, 2, 1, 3, 4).reshape(g * ph, g * pw, -1)
    return out


def none_detail(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """All zeros (black, -1 after scaling): the paper's "all-zero map"."""
    return np.zeros_like(image)


DETAIL_MAPS = {
    "hf": hf_detail,
    "rgb": rgb_detail,
    "noise": noise_detail,
    "shuffle": shuffle_detail,
    "none": none_detail,
}
DETAIL_MAP_NAMES = tuple(DETAIL_MAPS)
RANDOM_DETAIL_MAPS = frozenset({"noise", "shuffle"})  # these draw from the generator


def check_detail_map_name(name: str) -> None:
    if name not in DETAIL_MAPS:
        raise ValueError(f"unknown detail map {name!r}; valid names: {', '.join(DETAIL_MAP_NAMES)}")


def detail_map(name: str, image, mask, rng: np.random.Generator | None = None) -> np.ndarray:
    """Compute detail-map variant `name` (one of DETAIL_MAP_NAMES) of a reference image and mask.

    `mask` is bool, 0/1 or grey (uint8 0..255, float in [0, 1]; `as_soft_mask`).
    """
    check_detail_map_name(name)
    if name in RANDOM_DETAIL_MAPS and rng is None:
        raise ValueError(f"detail map {name!r} is random: it needs a numpy.random.Generator (rng=None given)")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    image = as_rgb_uint8(image, "image")
    mask = as_soft_mask(mask, "mask", shape=image.shape[:2])
    return DETAIL_MAPS[name](image, mask, rng)
