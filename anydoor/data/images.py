"""Input validation and conversion for images and masks.

Every public entry point of `anydoor.data` converts its inputs here, so bad
inputs fail early with a message naming the argument and the value instead of
a traceback from deep inside OpenCV. Conversions happen only where the input
is unambiguous; anything else is refused with a hint on how to convert.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import PIL.Image
import torch

# PIL modes whose pixel values are not RGB: convert them with PIL's own rules.
_PIL_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV"}
_PIL_TO_RGBA = {"P", "PA", "LA", "La", "RGBa"}


def _to_array(x, name: str, *, image: bool) -> np.ndarray:
    """PIL / numpy / torch -> numpy array, original dtype; images come back channels last.

    Masks (image=False) keep PIL palette indices as they are: a 'P' mask's
    values are labels, not colours.
    """
    if isinstance(x, PIL.Image.Image):
        if image and x.mode in _PIL_TO_RGBA:
            x = x.convert("RGBA")
        elif image and x.mode in _PIL_TO_RGB:
            x = x.convert("RGB")
        return np.asarray(x)
    if isinstance(x, torch.Tensor):
        array = x.detach().cpu().numpy()
        # torch images are channels-first by convention; accept HWC too when unambiguous.
        if image and array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        return array
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a PIL image, numpy array or torch tensor, got {type(x).__name__}")


def _check_not_empty(array: np.ndarray, name: str) -> None:
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {tuple(array.shape)}")


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 as is, floats in [0, 1] scaled by 255; everything else refused."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        raise TypeError(f"{name} has dtype bool: that is a mask, not an image (pass it as a mask)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name} is a float image with values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] "
                "(rescale it, e.g. (x + 1) / 2 for [-1, 1] images, or convert to uint8)"
            )
        return np.round(array * 255.0).astype(np.uint8)
    # 16/32-bit integers carry no range: 0..65535, 0..4095 (12-bit sensors), 0..255 all occur.
    raise TypeError(
        f"{name} has dtype {array.dtype}, whose value range is ambiguous; "
        "convert it to uint8 (0..255) or float (0..1) first"
    )


def _channels_last(x, name: str) -> np.ndarray:
    array = _to_array(x, name, image=True)
    _check_not_empty(array, name)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{name} must be HxW or HxWxC, got shape {tuple(array.shape)}")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name} must have 1, 3 or 4 channels (last axis; torch tensors may be CxHxW), "
            f"got shape {tuple(array.shape)}"
        )
    return array


def as_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Convert an image to a contiguous HxWx3 uint8 RGB array (a copy).

    Accepts PIL images, numpy arrays (HxW, HxWxC) and torch tensors (CxHxW or
    HxWxC). Grayscale is repeated to 3 channels, RGBA loses its alpha (use
    `load_rgba_object` to keep alpha as a mask), floats in [0, 1] are scaled by
    255 and rounded. Refused: bool (a mask), integer dtypes other than uint8
    (ambiguous range), floats outside [0, 1], empty arrays, other shapes.
    """
    array = _to_uint8(_channels_last(image, name), name)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.array(array[:, :, :3], order="C")  # always a copy: callers may write into it


def as_binary_mask(mask, name: str = "mask", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Convert a mask to an HxW bool array (a copy), refusing non-binary values.

    Accepts bool, {0, 1} or {0, 255} values of any numeric dtype, PIL 'L'/'1',
    HxWx1 / 1xHxW arrays and tensors. `shape` (H, W), when given, is the image
    size the mask must match. An empty mask is an error; a full one is not
    (callers decide).
    """
    array = _to_array(mask, name, image=False)
    _check_not_empty(array, name)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name} must be HxW (or HxWx1), got shape {tuple(array.shape)}")
    if array.dtype == np.bool_:
        binary = array.copy()
    elif np.issubdtype(array.dtype, np.number):
        # bincount is ~10x faster than np.unique on the common uint8 case.
        if array.dtype == np.uint8:
            values = np.flatnonzero(np.bincount(array.ravel(), minlength=256))
        else:
            values = np.unique(array)
        if np.isin(values, (0, 1)).all():
            binary = array == 1
        elif np.isin(values, (0, 255)).all():
            binary = array == 255
        else:
            odd = values[~np.isin(values, (0, 1, 255))][:5]
            raise ValueError(
                f"{name} is not binary: values must be {{0, 1}} or {{0, 255}} (or bool), found e.g. "
                f"{[v.item() for v in odd]} among {values.size} distinct values; threshold it first"
            )
    else:
        raise TypeError(f"{name} has dtype {array.dtype}; expected bool or a numeric dtype")
    if shape is not None and binary.shape != tuple(shape):
        raise ValueError(f"mask and image sizes differ: {name} {binary.shape} vs image {tuple(shape)}")
    if not binary.any():
        raise ValueError(f"{name} is empty: it has no foreground pixel")
    return binary


def load_rgba_object(path_or_image) -> tuple[np.ndarray, np.ndarray]:
    """Load a background-removed object (e.g. a DreamBooth RGBA cut-out).

    Returns (HxWx3 uint8 RGB, HxW bool mask) with mask = alpha >= 128 (alpha
    >= 0.5 for float images). Images without alpha are refused: the object's
    extent would be a guess.
    """
    name = "path_or_image"
    if isinstance(path_or_image, (str, PathLike)):
        with PIL.Image.open(path_or_image) as image:
            image.load()
            array = _channels_last(image, name)
    else:
        array = _channels_last(path_or_image, name)
    if array.shape[-1] != 4:
        raise ValueError(
            f"{name} has {array.shape[-1]} channel(s) and no alpha; pass an RGBA image "
            "or call as_rgb_uint8 / as_binary_mask with an explicit mask"
        )
    rgba = _to_uint8(array, name)
    mask = rgba[:, :, 3] >= 128
    if not mask.any():
        raise ValueError(f"{name} has an empty alpha channel: no pixel has alpha >= 128")
    return np.ascontiguousarray(rgba[:, :, :3]), mask
