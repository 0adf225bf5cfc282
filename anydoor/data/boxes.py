"""Box geometry for reference crops, target boxes and scene crops.

Boxes are `(x0, y0, x1, y1)` integer tuples, half-open: the box covers
`image[y0:y1, x0:x1]`. Sizes are `(H, W)` tuples, as numpy shapes.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def check_box(box, name: str = "box") -> Box:
    """Validate a box: 4 integers with x0 < x1 and y0 < y1; returns it as a tuple of ints."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 4 integers (x0, y0, x1, y1), got {box!r}") from None
    if any(int(v) != v for v in box):
        raise TypeError(f"{name} must hold integers, got {box!r}")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name} {box!r} is empty: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def _check_hw(image_hw) -> tuple[int, int]:
    h, w = (int(v) for v in image_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive (H, W), got {tuple(image_hw)}")
    return h, w


def clip_box(box, image_hw) -> Box:
    """Clip a box to the image; a box that ends up empty is an error."""
    x0, y0, x1, y1 = check_box(box)
    h, w = _check_hw(image_hw)
    clipped = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"box {tuple(box)} lies outside the image of size (H, W) = {(h, w)}")
    return clipped


def mask_box(mask: np.ndarray) -> Box:
    """Tight box around the True pixels of a bool HxW mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"mask of size {mask.shape} is empty: it has no box")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def expand_box(box, ratio: float, image_hw=None) -> Box:
    """Scale a box about its centre by `ratio`, then clip to `image_hw` (None: no clipping).

    The new sides are round(ratio * side), at least 1 px; the extra pixels
    split evenly, the odd one going right/down, so ratio >= 1 always contains
    the original box.
    """
    x0, y0, x1, y1 = check_box(box)
    if not ratio > 0:
        raise ValueError(f"ratio must be positive, got {ratio!r}")
    w, h = x1 - x0, y1 - y0
    new_w, new_h = max(1, round(ratio * w)), max(1, round(ratio * h))
    x0 -= (new_w - w) // 2
    y0 -= (new_h - h) // 2
    expanded = (x0, y0, x0 + new_w, y0 + new_h)
    return expanded if image_hw is None else clip_box(expanded, image_hw)


def square_box(box, image_hw=None) -> Box:
    """Square box of side max(w, h) around the box's centre, clipped to `image_hw` (None: no clipping).

    Near the image border the clipped box is no longer square; `pad_to_square`
    restores the square shape after cropping.
    """
    x0, y0, x1, y1 = check_box(box)
    side = max(x1 - x0, y1 - y0)
    x0 -= (side - (x1 - x0)) // 2
    y0 -= (side - (y1 - y0)) // 2
    square = (x0, y0, x0 + side, y0 + side)
    return square if image_hw is None else clip_box(square, image_hw)


def box_area_ratio(box, image_hw) -> float:
    """Area of the box over the area of the image."""
    x0, y0, x1, y1 = check_box(box)
    h, w = _check_hw(image_hw)
    return (x1 - x0) * (y1 - y0) / (h * w)


def box_in_box(inner, outer) -> Box:
    """Coordinates of `inner` relative to the top-left corner of `outer`, which must contain it."""
    ix0, iy0, ix1, iy1 = check_box(inner, "inner")
    ox0, oy0, ox1, oy1 = check_box(outer, "outer")
    if ix0 < ox0 or iy0 < oy0 or ix1 > ox1 or iy1 > oy1:
        raise ValueError(f"inner box {tuple(inner)} is not inside outer box {tuple(outer)}")
    return ix0 - ox0, iy0 - oy0, ix1 - ox0, iy1 - oy0


def box_mask(box, image_hw) -> np.ndarray:
    """Bool HxW mask that is True inside the (clipped) box."""
    x0, y0, x1, y1 = clip_box(box, image_hw)
    mask = np.zeros(_check_hw(image_hw), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def pad_to_square(image: np.ndarray, pad_value) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad an HxW or HxWxC array to a centred square; returns (padded, (top, left))."""
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot pad an empty image of shape {image.shape} to a square")
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.empty((side, side) + image.shape[2:], dtype=image.dtype)
    padded[...] = pad_value
    padded[top : top + h, left : left + w] = image
    return padded, (top, left)
