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

from anydoor.data.boxes import MIN_MASK_PIXELS

# PIL modes whose pixel values are not RGB: convert them with PIL's own rules.
_PIL_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV"}
_PIL_TO_RGBA = {"P", "PA", "LA", "La", "RGBa"}
# A mask file's pixel (or an object's alpha) is in when above this: the released
# scripts' `cv2.imread(path)[:, :, 0] > 128` and `alpha > 128` (DESIGN.md 1d).
MASK_THRESHOLD = 128
MASK_ROLES = ("mask", "object", "scene")


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

    Accepts bool, {0, 1} or {0, 255} values of any numeric dtype, HxWx1 /
    1xHxW arrays and tensors, and PIL images of any mask mode, read like mask
    files (`load_mask_file`'s rule: L, RGB, RGBA above 128, palette index not
    0). `shape` (H, W), when given, is the image size the mask must match. An
    empty mask is an error; a full one is not (callers decide).
    """
    if isinstance(mask, PIL.Image.Image):
        binary = _pil_mask_pixels(mask, name)
        if shape is not None and binary.shape != tuple(shape):
            raise ValueError(f"mask and image sizes differ: {name} {binary.shape} vs image {tuple(shape)}")
        if not binary.any():
            raise ValueError(f"{name} is empty: it has no foreground pixel ({_rule(mask.mode)})")
        return binary
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


def as_soft_mask(mask, name: str = "mask", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Convert a binary or grey mask to an HxW float64 array in [0, 1] (a copy).

    The released reference mask is a 0/255 mask resized bilinearly, so its
    edge is grey (DESIGN.md 1d); the high-frequency map reads it as
    `mask / 255`. Accepts what `as_binary_mask` accepts (as 0/1) plus uint8
    masks of any values (divided by 255) and float masks in [0, 1]. A mask
    with no value above 0 is an error.
    """
    if isinstance(mask, PIL.Image.Image):
        return as_binary_mask(mask, name, shape).astype(np.float64)
    array = _to_array(mask, name, image=False)
    _check_not_empty(array, name)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"{name} must be HxW (or HxWx1), got shape {tuple(array.shape)}")
    if array.dtype == np.uint8 and np.count_nonzero(array > 1):
        soft = array / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"{name} is a float mask with values outside [0, 1] (or NaN): rescale it first")
        soft = array.astype(np.float64)
    else:
        soft = as_binary_mask(array, name).astype(np.float64)
    if shape is not None and soft.shape != tuple(shape):
        raise ValueError(f"mask and image sizes differ: {name} {soft.shape} vs image {tuple(shape)}")
    if not soft.any():
        raise ValueError(f"{name} is empty: it has no foreground pixel")
    return soft


# ---------------------------------------------------------------- mask files


def _rule(mode: str) -> str:
    """How a mask of this PIL mode is read, for error messages."""
    if mode in ("P", "PA"):
        return f"mode {mode} (palette): a pixel is in when its index is not 0"
    return f"mode {mode}: a pixel is in when a colour channel is above {MASK_THRESHOLD}"


def _pil_mask_pixels(image: PIL.Image.Image, name: str) -> np.ndarray:
    """The one rule that reads a mask image (DESIGN.md 1d, "Mask files"): HxW bool.

    Palette ('P', 'PA'): index != 0 (the YouTube-VOS / DAVIS convention).
    'L', 'LA', 'RGB', 'RGBA' (and CMYK/YCbCr JPEGs, converted to RGB): in when
    any colour channel is above 128, alpha ignored; on the black-and-white
    masks of the released examples this is the released reading
    `cv2.imread(path)[:, :, 0] > 128`, and JPEG noise around 0 and 255 does
    not matter. 16-bit and float images are refused: their scale is a guess.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        return np.asarray(image)[..., 0] != 0 if mode == "PA" else np.asarray(image) != 0
    if mode == "1":
        return np.asarray(image.convert("L")) > MASK_THRESHOLD
    if mode in _PIL_TO_RGB:
        image, mode = image.convert("RGB"), "RGB"
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(
            f"{name} has PIL mode {mode!r}, whose value range is ambiguous for a mask; save it as an 8-bit "
            "L, RGB, RGBA or palette image"
        )
    array = np.asarray(image)
    if array.ndim == 2:
        return array > MASK_THRESHOLD
    colour = array[..., :-1] if mode in ("LA", "RGBA") else array
    return (colour > MASK_THRESHOLD).any(axis=-1)


def load_mask_file(path, role: str = "mask", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as users have it (PNG or JPEG; L, RGB, RGBA or palette): HxW bool.

    Every loader of a one-object mask file calls this (the CLI, the
    evaluation sets). The reading rule is `as_binary_mask`'s for PIL images:
    RGB/RGBA/L pixels are in when a colour channel is above 128, palette
    pixels when their index is not 0. `role` says what the mask is for:
    "object" (every pixel set means the whole image is the object), "scene"
    (where the object goes: every pixel set is an error, it leaves no scene
    to compose into) or "mask" (anything else, e.g. a true target's mask).
    Errors name the file: an empty mask; fewer than 10 pixels set (the
    released code silently takes the whole image instead, DESIGN.md 1d);
    a size different from `shape` (H, W) when given.
    """
    if role not in MASK_ROLES:
        raise ValueError(f"role must be one of {MASK_ROLES}, got {role!r}")
    name = f"mask file {str(path)!r}"
    with PIL.Image.open(path) as image:
        image.load()
        mask = _pil_mask_pixels(image, name)
        rule = _rule(image.mode)
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"{name} is {mask.shape} (H, W) but its image is {tuple(shape)}")
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise ValueError(f"{name} is empty: no pixel is set ({rule})")
    if count < MIN_MASK_PIXELS:
        raise ValueError(
            f"{name} has only {count} pixel(s) set, fewer than {MIN_MASK_PIXELS} ({rule}); "
            "the released code would silently take the whole image"
        )
    if role == "scene" and count == mask.size:
        raise ValueError(
            f"{name} has every pixel set: a scene mask must leave some scene around the object "
            f"(is it inverted? {rule})"
        )
    return mask


def read_label_map(path) -> np.ndarray:
    """An annotation PNG as an HxW integer array of object ids (0 = background).

    For data sets that hold several objects in one file (YouTube-VOS, MOSE,
    instance maps); one object's mask is `labels == id`, the palette rule of
    `load_mask_file` for a single id. Palette ('P') PNGs give their indices;
    grayscale gives its values; RGB is accepted only when its channels are
    equal (a grayscale mask saved as RGB).
    """
    with PIL.Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode == "1":
            image = image.convert("L")
        array = np.asarray(image)
    if mode in ("RGB", "RGBA"):
        rgb = array[..., :3]
        if not (rgb == rgb[..., :1]).all():
            raise ValueError(
                f"mask {str(path)!r} is a colour ({mode}) image; expected a palette or grayscale PNG of object ids"
            )
        array = rgb[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"mask {str(path)!r} has mode {mode} and shape {array.shape}; expected a palette or grayscale PNG"
        )
    return array


def load_rgba_object(path_or_image) -> tuple[np.ndarray, np.ndarray]:
    """Load a background-removed object (e.g. a DreamBooth RGBA cut-out).

    Returns (HxWx3 uint8 RGB, HxW bool mask) with mask = alpha > 128, the
    released reading (float images are scaled to 0..255 first). Images without alpha
    are refused: the object's extent would be a guess.
    """
    name = f"object file {str(path_or_image)!r}" if isinstance(path_or_image, (str, PathLike)) else "path_or_image"
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
    mask = rgba[:, :, 3] > MASK_THRESHOLD
    if not mask.any():
        raise ValueError(f"{name} has an empty alpha channel: no pixel has alpha above {MASK_THRESHOLD}")
    return np.ascontiguousarray(rgba[:, :, :3]), mask
