"""Box geometry for reference crops, target boxes and scene crops.

Boxes are `(x0, y0, x1, y1)` integer tuples, half-open: the box covers
`image[y0:y1, x0:x1]`. Sizes are `(H, W)` tuples, as numpy shapes.

Two families live here. `mask_box`, `expand_box` and `square_box` are exact
geometry: the box contains the mask, expanding never loses a pixel; metrics,
evaluation crops and mask perturbation rely on that. The `released_*`
functions reproduce the released AnyDoor code's rules to the pixel
(DESIGN.md 1d), quirks included: pair preparation uses them, so a converted
released checkpoint sees the inputs it was trained on.
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
    """Pad an HxW or HxWxC array to a centred square; returns (padded, (top, left)).

    The split is the released `pad_to_square` (random=False, DESIGN.md 1d):
    `int(pad / 2)` before, the rest after.
    """
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot pad an empty image of shape {image.shape} to a square")
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.empty((side, side) + image.shape[2:], dtype=image.dtype)
    padded[...] = pad_value
    padded[top : top + h, left : left + w] = image
    return padded, (top, left)


# ---------------------------------------------------------------- the released rules (DESIGN.md 1d)

MIN_MASK_PIXELS = 10  # released get_bbox_from_mask: fewer pixels set and it takes the whole image


def released_ratio(ratio_range, rng: np.random.Generator) -> float:
    """The released ratio draw `randint(10 * lo, 10 * hi) / 10` (expand_bbox, the reference padding).

    A multiple of 0.1 in [lo, hi), hi excluded: (1.1, 1.2) always gives 1.1,
    (1.3, 3.0) one of 1.3, ..., 2.9. `lo == hi` pins the ratio to lo without a draw.
    """
    lo, hi = (round(10 * float(v)) for v in ratio_range)
    if lo == hi:
        return lo / 10
    if lo > hi:
        raise ValueError(f"ratio_range must be (lo, hi) with lo <= hi, got {tuple(ratio_range)!r}")
    return int(rng.integers(lo, hi)) / 10  # k / 10: the same double as the released randint(...) / 10


def released_mask_box(mask: np.ndarray, name: str = "mask") -> Box:
    """The box the released code takes of a bool HxW mask (get_bbox_from_mask, DESIGN.md 1d).

    Returns `(x1, y1, x2, y2)` with x1/x2 the first and *last* column holding
    a pixel, y1/y2 the same for rows. Read half-open, as the released code
    slices it (`image[y1:y2, x1:x2]`), it leaves out the mask's last row and
    column; `released_expand_box` reads it as inclusive. The released code
    takes the whole image for a mask with fewer than `MIN_MASK_PIXELS`
    pixels; here that is an error (a mask that small is a mistake, not an
    object), and so is a mask one pixel tall or wide (its box would be empty).
    """
    count = int(np.count_nonzero(mask))
    if count < MIN_MASK_PIXELS:
        raise ValueError(
            f"{name} has {count} pixel(s) set, fewer than {MIN_MASK_PIXELS}: too small to place or crop an "
            "object (the released code would silently take the whole image)"
        )
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])
    if box[2] == box[0] or box[3] == box[1]:
        raise ValueError(
            f"{name} is one pixel {'wide' if box[2] == box[0] else 'tall'} (columns {box[0]}..{box[2]}, rows "
            f"{box[1]}..{box[3]}): its released box, which leaves out the last row and column, would be empty"
        )
    return box


def released_expand_box(box, ratio: float, image_hw) -> Box:
    """Expand a box about its centre by `ratio`, the released way (expand_bbox, DESIGN.md 1d), clipped.

    The input is read as the released inclusive box: sides `x2 - x1 + 1`,
    `y2 - y1 + 1`, centre `0.5 * (x1 + x2)`. New corners are
    `int(centre -/+ ratio * side / 2)` (truncation toward zero), clipped to
    [0, W] and [0, H]; the result is read half-open. Applied to its own
    output (the crop around the target box) it again counts one pixel more
    per side, as the released code does.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {tuple(box)!r} is reversed: need x1 <= x2 and y1 <= y2")
    if not ratio > 0:
        raise ValueError(f"ratio must be positive, got {ratio!r}")
    h_img, w_img = _check_hw(image_hw)
    xc, yc = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    h, w = ratio * (y2 - y1 + 1), ratio * (x2 - x1 + 1)
    expanded = (
        max(0, int(xc - w * 0.5)),
        max(0, int(yc - h * 0.5)),
        min(w_img, int(xc + w * 0.5)),
        min(h_img, int(yc + h * 0.5)),
    )
    return check_box(expanded, "expanded box")


def released_square_box(box, image_hw) -> Box:
    """Square a (clipped) box around its centre, the released way (box2squre, DESIGN.md 1d), clipped.

    `cx = (x1 + x2) // 2`, `cy = (y1 + y2) // 2`; the shorter side becomes
    `centre -/+ longer // 2` (so an odd longer side loses a pixel), then the
    box is clipped to the image again. Near a border the result is not
    square; `pad_to_square` squares the crop.
    """
    x1, y1, x2, y2 = check_box(box)
    h_img, w_img = _check_hw(image_hw)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    h, w = y2 - y1, x2 - x1
    if h >= w:
        x1, x2 = cx - h // 2, cx + h // 2
    else:
        y1, y2 = cy - w // 2, cy + w // 2
    return check_box((max(0, x1), max(0, y1), min(w_img, x2), min(h_img, y2)), "squared box")


def pad_by_ratio(image: np.ndarray, ratio: float, pad_value) -> np.ndarray:
    """Centre an HxW(xC) array on a canvas `ratio` times its size (the released expand_image_mask).

    Canvas `int(h * ratio)` x `int(w * ratio)` (truncated); `(H - h) // 2`
    rows on top and the rest below, the same for columns (DESIGN.md 1d: the
    reference's padding, image 255, mask 0).
    """
    if not ratio >= 1.0:
        raise ValueError(f"ratio must be >= 1, got {ratio!r}")
    h, w = image.shape[:2]
    out_h, out_w = int(h * ratio), int(w * ratio)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    out = np.empty((out_h, out_w) + image.shape[2:], dtype=image.dtype)
    out[...] = pad_value
    out[top : top + h, left : left + w] = image
    return out
