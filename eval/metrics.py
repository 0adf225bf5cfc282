"""Evaluation metrics (DESIGN.md section 2): identity (CLIP-I, DINO-I) and ground truth.

- CLIP-I / DINO-I: cosine similarity (x100, like the paper's tables) between
  image embeddings of the generated object region and of the reference
  object, backgrounds removed (`eval.crops`). DINO-I follows DreamBooth's
  convention: the CLS token of a ViT-S/16 trained with DINO.
- Where a true target exists: PSNR and SSIM inside the true object mask (not
  the whole box: copying the background would score well there), and
  diversity across sample seeds, the mean pairwise (1 - SSIM) of the
  generated boxes.

Tensor in, number out: images are (B, 3, H, W) floats in [0, 1], masks
(B, H, W) bools. No file I/O or logging here. The `Metric` classes
accumulate per-sample values (``compute()`` gives their mean,
``compute_per_sample()`` all of them); the pure functions compute the
per-sample values the runner writes into its rows.

Where a similarity's backbone comes from is part of its name
(`metric_label`): "CLIP-I" / "DINO-I" with the real backbones, "CLIP-I
(in-world)" / "DINO-I (in-world)" with the embedded world's trained ones,
"CLIP-sim (random-init)" / "DINO-sim (random-init)" with random weights.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("clip_i", "dino_i", "psnr_mask", "ssim_mask", "diversity", "seam", "retrieved")
_IDENTITY_LABELS = {
    "clip_i": {"real": "CLIP-I", "in-world": "CLIP-I (in-world)", "random": "CLIP-sim (random-init)"},
    "dino_i": {"real": "DINO-I", "in-world": "DINO-I (in-world)", "random": "DINO-sim (random-init)"},
}
_LABELS = {
    "psnr_mask": "PSNR in target mask (dB)",
    "ssim_mask": "SSIM in target mask",
    "diversity": "diversity (1 - SSIM across seeds)",
    "seam": "seam (0-255, lower is better)",  # eval.seam: |composite - scene| in the crop outside the box
    "retrieved": "retrieval top-1",  # the own reference nearest of the benchmark's, by the DINO-I backbone
}
# PSNR of identical regions (MSE 0) is capped rather than infinite, so means,
# bootstraps and differences stay finite. 100 dB is an MSE of 1e-10 on [0, 1]
# images, far below one uint8 step (PSNR 48 dB at an MSE of one level).
PSNR_CAP_DB = 100.0
# SSIM's Gaussian window (sigma 1.5, 11 taps) reflect-pads 5 px per side.
SSIM_MIN_SIDE = 6


def metric_label(name: str, source: str | None = None) -> str:
    """The name a table may show for metric `name` computed with backbones of `source`
    ("real", "in-world" or "random", `eval.backbones.METRIC_SOURCES`; ignored by the
    backbone-free metrics). "CLIP-I" and "DINO-I" only for the real backbones."""
    if name in _LABELS:
        return _LABELS[name]
    if name not in _IDENTITY_LABELS:
        raise ValueError(f"name={name!r} is not one of the metrics {', '.join(METRIC_NAMES)}")
    if source not in _IDENTITY_LABELS[name]:
        raise ValueError(f"source={source!r} of {name} is not one of {', '.join(_IDENTITY_LABELS[name])}")
    return _IDENTITY_LABELS[name][source]


def _check_images(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{images.min().item():.4g}, {images.max().item():.4g}]"
        )
    return images


def _check_pair(preds, target, mask=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    preds, target = _check_images(preds, "preds"), _check_images(target, "target")
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is None:
        return preds, target, None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor (B, H, W), got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    expected = (preds.shape[0], *preds.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape (B, H, W) = {expected}, got {tuple(mask.shape)}")
    mask = mask.to(device=preds.device, dtype=torch.bool)
    empty = (~mask.flatten(1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask is empty (no True pixel) for batch items {empty}")
    return preds, target, mask


# --------------------------------------------------------------------------- pure functions


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """An HxWx3 uint8 image as the metrics' input: a (1, 3, H, W) float32 tensor in [0, 1]."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an HxWx3 uint8 array, got {getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0


def embed_similarity(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity x100 of two (B, D) embedding batches (CLIP-I / DINO-I)."""
    for name, x in (("generated", generated), ("reference", reference)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name} embeddings must be a (B, D) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if generated.shape != reference.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} embeddings differ in shape")
    return 100.0 * F.cosine_similarity(generated.float(), reference.float(), dim=1)


def masked_psnr(preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) over the pixels of `mask` only (all 3 channels), for
    images in [0, 1]: 10 log10(1 / MSE), capped at `PSNR_CAP_DB` when the
    region is identical (MSE 0)."""
    preds, target, mask = _check_pair(preds, target, mask)
    weight = mask[:, None].to(preds.dtype)
    mse = ((preds - target) ** 2 * weight).flatten(1).sum(1) / (3.0 * weight.flatten(1).sum(1))
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(torch.finfo(mse.dtype).tiny))
    return psnr.clamp(max=PSNR_CAP_DB)


def _ssim_map(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map (B, H, W), channels averaged; torchmetrics' Gaussian SSIM (sigma 1.5)."""
    if min(preds.shape[-2:]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE} px per side, got {tuple(preds.shape[-2:])}")
    _, full = structural_similarity_index_measure(preds, target, data_range=1.0, return_full_image=True)
    return full.mean(dim=1)


def masked_ssim(preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM averaged over the pixels of `mask` (the SSIM map is
    computed on the whole image, so windows see the mask's surroundings)."""
    preds, target, mask = _check_pair(preds, target, mask)
    ssim = _ssim_map(preds, target)
    weight = mask.to(ssim.dtype)
    return (ssim * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def diversity(boxes: torch.Tensor) -> float:
    """Mean pairwise (1 - SSIM) of K generated boxes of one input (K, 3, H, W);
    NaN for fewer than two. 0 means every seed gave the same image."""
    boxes = _check_images(boxes, "boxes")
    k = boxes.shape[0]
    if k < 2:
        return float("nan")
    i, j = (list(t) for t in zip(*itertools.combinations(range(k), 2)))
    ssim = _ssim_map(boxes[i], boxes[j]).flatten(1).mean(1)
    return float((1.0 - ssim).mean())


# --------------------------------------------------------------------------- torchmetrics


class _PerSampleMetric(Metric):
    """Accumulates per-sample values (a "cat" state); compute() is their mean."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def compute(self) -> torch.Tensor:
        return self.compute_per_sample().mean()

    def compute_per_sample(self) -> torch.Tensor:
        """All per-sample values seen since the last reset, in update order."""
        return dim_zero_cat(self.values)


class _EmbeddingSimilarity(_PerSampleMetric):
    higher_is_better = True
    family = ""

    def __init__(self, embedder=None, allow_random: bool = False, **kwargs):
        super().__init__(**kwargs)
        if embedder is None:
            embedder = self._default_embedder()
        if getattr(embedder, "family", None) != self.family:
            raise ValueError(
                f"embedder must be a {self.family} ImageEmbedder (eval.backbones), got "
                f"{getattr(embedder, 'name', type(embedder).__name__)!r} of family {getattr(embedder, 'family', None)!r}"
            )
        if embedder.source == "random" and not allow_random:
            raise ValueError(
                f"embedder {embedder.name!r} has random weights: its similarity is not {metric_label(self.metric, 'real')}. "
                f"Pass allow_random=True to use it anyway (the results are labelled {metric_label(self.metric, 'random')!r})."
            )
        self.embedder = embedder.eval()

    @property
    def source(self) -> str:
        return self.embedder.source

    @property
    def label(self) -> str:
        return metric_label(self.metric, self.source)

    def update(self, generated: torch.Tensor, reference: torch.Tensor | None = None, *, reference_embeddings=None) -> None:
        """generated: (B, 3, H, W) generated regions in [0, 1]; reference: the
        reference objects as images, or `reference_embeddings` (B, D) already
        computed with ``embedder`` (to embed each reference once)."""
        if (reference is None) == (reference_embeddings is None):
            raise ValueError("give exactly one of reference (images) or reference_embeddings")
        generated = _check_images(generated, "generated")
        with torch.no_grad():
            if reference_embeddings is None:
                reference_embeddings = self.embedder(_check_images(reference, "reference"))
            similarity = embed_similarity(self.embedder(generated), reference_embeddings.to(generated.device))
        self.values.append(similarity)


class CLIPImageSimilarity(_EmbeddingSimilarity):
    """CLIP-I: cosine of CLIP image embeddings x100 (DESIGN.md section 2).

    Args:
        embedder: a CLIP `eval.backbones.ImageEmbedder`; None loads open_clip
            ViT-B-32 with OpenAI weights from the local cache
            (`eval.backbones.load_clip_embedder` for other models, e.g. ViT-H-14).
        allow_random: accept an embedder with random weights (the embedded
            default); its numbers are labelled "CLIP-sim (random-init)", never CLIP-I.
    """

    family = "clip"
    metric = "clip_i"

    @staticmethod
    def _default_embedder():
        from eval.backbones import load_clip_embedder

        return load_clip_embedder()


class DINOImageSimilarity(_EmbeddingSimilarity):
    """DINO-I: cosine of DINO CLS embeddings x100, DreamBooth's convention
    (ViT-S/16 DINO, `facebook/dino-vits16`; DINOv2 as an option).

    Args: as `CLIPImageSimilarity`; None loads `facebook/dino-vits16`.
    """

    family = "dino"
    metric = "dino_i"

    @staticmethod
    def _default_embedder():
        from eval.backbones import load_dino_embedder

        return load_dino_embedder()


class MaskedPSNR(_PerSampleMetric):
    """PSNR inside the true object mask (`masked_psnr`), capped at `PSNR_CAP_DB`."""

    higher_is_better = True

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.values.append(masked_psnr(preds, target, mask))


class MaskedSSIM(_PerSampleMetric):
    """SSIM averaged inside the true object mask (`masked_ssim`)."""

    higher_is_better = True

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        self.values.append(masked_ssim(preds, target, mask))
