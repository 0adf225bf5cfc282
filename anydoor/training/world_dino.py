"""Self-distillation for the embedded world's ViT backbones: DINO, and iBOT for the patch tokens.

DINO (Caron et al. 2021, Algorithm 1): a student and an exponential-moving-
average teacher see different views of one image; the student's output
distribution over K prototypes is trained to match the teacher's, which is
centred (a running mean subtracted, against collapse to one prototype) and
sharpened (a low temperature, against collapse to uniform). Multi-crop: two
global views go through both networks, a few small local views through the
student only. iBOT (Zhou et al. 2022), as DINOv2 (Oquab et al. 2023) uses it:
some patch tokens of the student's global views are replaced by the mask
token, and the student's output at those patches is trained to match the
teacher's output at the same, unmasked patches, so the patch tokens, which
AnyDoor feeds to the UNet, are trained too.

No labels and no video correspondences: two views of one render are the only
positives. The views vary what the synthetic world varies (turn, scale,
position, lighting, background, `random_views`), never hue, which is part of
an object's identity here.

Two backbones are trained this way (DESIGN.md section 4): the DINOv2-like ID
backbone (transformers `Dinov2Model`, DINO + iBOT, global views at half the
ID extractor's 224 px and a short last phase at 224 px, like DINOv2's
high-resolution adaptation) and the DINO-I metric backbone (transformers
`ViTModel`, DINO v1's recipe: the CLS output, no iBOT, as ViT-S/16 was trained).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from anydoor.data.synthetic import draw_background
from anydoor.data.world_views import render_batch

ARCHITECTURES = ("dinov2", "vit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DinoSettings:
    """One backbone and its self-distillation run (defaults: DINO's, scaled to a short CPU run)."""

    architecture: str  # "dinov2" (Dinov2Model, + iBOT) or "vit" (ViTModel, DINO v1)
    backbone: dict  # the transformers config's architecture fields; image_size is the positional grid's
    global_size: int = 112  # side of the two global views
    local_size: int = 56  # side of the local views
    local_crops: int = 4
    highres_steps: int = 0  # the last steps take global views at backbone["image_size"] (DINOv2's last phase)
    global_scale: tuple[float, float] = (0.35, 1.0)  # area of the render a view covers
    local_scale: tuple[float, float] = (0.08, 0.35)
    ibot: bool = False  # masked patch-token loss (DINOv2 / iBOT)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # share of patches masked in a masked global view
    mask_sample_prob: float = 0.5  # share of global views that are masked (DINOv2)
    out_dim: int = 1024  # prototypes K
    head_hidden: int = 256
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.07)  # linear warm-up over teacher_temp_warmup of the steps
    teacher_temp_warmup: float = 0.3
    momentum: tuple[float, float] = (0.99, 1.0)  # teacher EMA, cosine schedule
    # DINO uses 0.9 at batch 1024; over 64 renders a step the centre would follow each batch and cancel the
    # teacher's signal (a repeated 4-render batch: loss 1.2 -> 4.4 in 30 steps at 0.9, 1.2 -> 0.07 at 0.99).
    center_momentum: float = 0.99
    steps: int = 2000
    batch_size: int = 64  # renders per step (each gives 2 global + local_crops views)
    learning_rate: float = 5e-4
    weight_decay: tuple[float, float] = (0.04, 0.4)  # cosine schedule
    warmup_steps: int = 100
    clip_grad: float = 3.0
    render_size: int = 64
    white_prob: float = 0.5  # renders on white (background removed)
    swap_prob: float = 0.5  # views whose background is replaced by another (or white)
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.ibot and self.architecture != "dinov2":
            raise ValueError("ibot=True needs architecture='dinov2' (its mask token)")
        if "image_size" not in self.backbone:
            raise ValueError("backbone must give image_size (the positional grid the weights keep)")
        if not 0 <= self.highres_steps <= self.steps:
            raise ValueError(f"highres_steps must be in [0, steps={self.steps}], got {self.highres_steps}")


def build_backbone(settings: DinoSettings, seed: int) -> nn.Module:
    """The transformers backbone of `settings`, random init drawn from `seed`."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if settings.architecture == "dinov2":
            return Dinov2Model(Dinov2Config(**settings.backbone))
        return ViTModel(ViTConfig(**settings.backbone), add_pooling_layer=False)


def backbone_tokens(backbone: nn.Module, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None):
    """(B, 1 + N, D) tokens after the final LayerNorm, for views of any size (positions interpolated)."""
    kwargs = {} if bool_masked_pos is None else {"bool_masked_pos": bool_masked_pos}
    if backbone.config.model_type == "vit":
        kwargs["interpolate_pos_encoding"] = True
    return backbone(pixel_values=pixel_values, **kwargs).last_hidden_state


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP, an L2-normalised bottleneck and a weight-normalised
    linear layer onto the K prototypes whose norm is fixed to 1 (DINO's ``norm_last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class SelfDistillationModel(nn.Module):
    """Backbone + DINO head on the CLS token (+ iBOT head on the patch tokens)."""

    def __init__(self, backbone: nn.Module, settings: DinoSettings):
        super().__init__()
        width = backbone.config.hidden_size
        self.backbone = backbone
        self.dino_head = DINOHead(width, settings.out_dim, settings.head_hidden, settings.head_bottleneck)
        self.ibot_head = (
            DINOHead(width, settings.out_dim, settings.head_hidden, settings.head_bottleneck) if settings.ibot else None
        )

    def forward(self, views: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
                patches: torch.Tensor | None = None):
        """(DINO logits of the CLS tokens (B, K), iBOT logits (M, K) of the patches selected by the
        bool (B, N) `patches`, or None). Masked patches are replaced by the mask token (`bool_masked_pos`)."""
        tokens = backbone_tokens(self.backbone, views, bool_masked_pos)
        cls_out = self.dino_head(tokens[:, 0])
        patch_out = None if patches is None else self.ibot_head(tokens[:, 1:][patches])
        return cls_out, patch_out


# --------------------------------------------------------------------------- views


def random_views(
    images: torch.Tensor,
    masks: torch.Tensor,
    backgrounds: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    swap_prob: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One random view of each render, (B, 3, size, size) in [0, 1].

    What the world varies: the background is replaced (by white or another of
    the world's backgrounds) with probability `swap_prob`; the object's
    lighting changes (brightness x0.8-1.25, contrast x0.8-1.25, on the object
    only); the view is a crop covering `scale` of the render's area (aspect
    3/4-4/3) anywhere inside it, turned by any angle about its centre.

    Args:
        images, backgrounds: (B, 3, S, S) in [0, 1]; masks: (B, 1, S, S) in {0, 1}.
    """
    b = images.shape[0]
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*(shape or (b,)), generator=generator)  # noqa: E731
    swap = (torch.rand(b, generator=generator) < swap_prob).view(b, 1, 1, 1).float()
    source = images * (1 - swap * (1 - masks)) + backgrounds * swap * (1 - masks)
    brightness, contrast = u(0.8, 1.25).view(b, 1, 1, 1), u(0.8, 1.25).view(b, 1, 1, 1)
    lit = ((source - 0.5) * contrast + 0.5) * brightness
    source = (masks * lit + (1 - masks) * source).clamp(0.0, 1.0)

    area = u(*scale)
    log_aspect = u(math.log(3 / 4), math.log(4 / 3))
    half_w = torch.sqrt(area * torch.exp(log_aspect)).clamp(max=1.0)
    half_h = torch.sqrt(area / torch.exp(log_aspect)).clamp(max=1.0)
    cx = (1 - half_w) * u(-1.0, 1.0)
    cy = (1 - half_h) * u(-1.0, 1.0)
    angle = u(-math.pi, math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([half_w * cos, -half_h * sin, cx], -1), torch.stack([half_w * sin, half_h * cos, cy], -1)], 1
    )
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalise(views: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation (DINO and DINOv2 were trained with it)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (views - mean) / std


def render_tensors(bank, settings: DinoSettings, rng: np.random.Generator):
    """A batch of renders as tensors: images and their other backgrounds (B, 3, S, S) in [0, 1],
    masks (B, 1, S, S) in {0, 1} (`random_views`' inputs)."""
    batch = render_batch(bank, settings.batch_size, settings.render_size, rng, settings.white_prob)
    images = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(batch.masks)[:, None].float()
    # The swap's other background: white or another of the world's, as often as renders have them.
    others = []
    for _ in range(settings.batch_size):
        if rng.random() < settings.white_prob:
            others.append(np.full((settings.render_size, settings.render_size, 3), 255, np.uint8))
        else:
            others.append(draw_background(settings.render_size, rng)[0])
    backgrounds = torch.from_numpy(np.stack(others)).permute(0, 3, 1, 2).float() / 255.0
    return images, masks, backgrounds


def random_patch_masks(count: int, num_patches: int, settings: DinoSettings, generator: torch.Generator) -> torch.Tensor:
    """(count, num_patches) bool: a share of the views (`mask_sample_prob`) have a random
    `mask_ratio` of their patches masked, the others none (DINOv2's sampling, unstructured)."""
    masks = torch.zeros(count, num_patches, dtype=torch.bool)
    for i in range(count):
        if torch.rand((), generator=generator) < settings.mask_sample_prob:
            lo, hi = settings.mask_ratio
            ratio = lo + (hi - lo) * torch.rand((), generator=generator).item()
            k = max(1, int(round(ratio * num_patches)))
            masks[i, torch.randperm(num_patches, generator=generator)[:k]] = True
    return masks


# --------------------------------------------------------------------------- losses and schedules


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float, views: int) -> torch.Tensor:
    """DINO's cross-entropy between the teacher's global views and every other student view.

    Args:
        student: (views * B, K) logits, global views first; teacher: (2 * B, K) logits.
    """
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1).chunk(2)
    log_probs = F.log_softmax(student / student_temp, dim=-1).chunk(views)
    terms = [-(t * log_probs[v]).sum(-1).mean() for i, t in enumerate(targets) for v in range(views) if v != i]
    return torch.stack(terms).mean()


def ibot_loss(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """iBOT's masked-patch cross-entropy: at each masked patch, the student's output matches the
    teacher's output at that patch of the unmasked view; mean over a view's masked patches, then views.

    Args:
        student, teacher: (M, K) logits of the masked patches, in ``masks.nonzero()`` order;
        masks: (B, N) bool, the student's masked patches (M of them).
    """
    has_mask = masks.any(dim=1)
    if not has_mask.any():
        return student.sum() * 0.0
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    per_patch = -(targets * F.log_softmax(student / student_temp, dim=-1)).sum(-1)
    view = masks.nonzero()[:, 0]
    weights = 1.0 / masks.sum(dim=1).clamp(min=1)[view]
    return (per_patch * weights).sum() / has_mask.sum()


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / max(1, steps - 1)))


@dataclass
class DinoRun:
    backbone: nn.Module  # the teacher's backbone (DINO keeps the teacher)
    seconds: float
    losses: list[float] = field(default_factory=list)
    teacher_moved: float = 0.0  # L2 distance the teacher's backbone moved from its init

    def log(self) -> dict:
        return {"seconds": round(self.seconds, 1), "loss_first": self.losses[0],
                "loss_last": float(np.mean(self.losses[-20:])), "teacher_moved": self.teacher_moved}


def train_dino(settings: DinoSettings, bank: list, progress: bool = True, renders=None) -> DinoRun:
    """Self-distil a backbone on renders of `bank`; returns the teacher's backbone (DINO's output).

    `renders`: an iterator of (images, masks, backgrounds) tensors (`render_tensors`' output) to
    train on instead of fresh renders of `bank` (e.g. one batch repeated, to check the recipe fits it).
    """
    backbone = build_backbone(settings, settings.seed)
    with torch.random.fork_rng(devices=[]):  # the heads' init too comes from the seed, not the global RNG
        torch.manual_seed(settings.seed + 1)
        student = SelfDistillationModel(backbone, settings)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    init = torch.cat([p.detach().flatten().clone() for p in teacher.backbone.parameters()])
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 2]))
    generator = torch.Generator().manual_seed(settings.seed)
    center = torch.zeros(1, settings.out_dim)
    patch_center = torch.zeros(1, settings.out_dim)
    patch = student.backbone.config.patch_size
    views_per_image = 2 + settings.local_crops
    run = DinoRun(backbone=teacher.backbone, seconds=0.0)
    start = time.perf_counter()
    for step in tqdm(range(settings.steps), desc=f"dino-{settings.architecture}", disable=not progress):
        # Schedules: lr warm-up then cosine, weight decay and teacher momentum cosine, teacher temperature warm-up.
        lr = settings.learning_rate * min(1.0, (step + 1) / settings.warmup_steps)
        if step >= settings.warmup_steps:
            lr = _cosine(settings.learning_rate, 1e-6, step - settings.warmup_steps, settings.steps - settings.warmup_steps)
        optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = lr, lr
        optimizer.param_groups[0]["weight_decay"] = _cosine(*settings.weight_decay, step, settings.steps)
        momentum = _cosine(*settings.momentum, step, settings.steps)
        warm = settings.teacher_temp_warmup * settings.steps
        lo, hi = settings.teacher_temp
        teacher_temp = lo + (hi - lo) * min(1.0, step / max(1.0, warm))

        images, masks, backgrounds = render_tensors(bank, settings, rng) if renders is None else next(renders)
        highres = step >= settings.steps - settings.highres_steps
        global_size = settings.backbone["image_size"] if highres else settings.global_size
        global_views = torch.cat(
            [random_views(images, masks, backgrounds, global_size, settings.global_scale, settings.swap_prob, generator)
             for _ in range(2)]
        )
        local_views = [
            random_views(images, masks, backgrounds, settings.local_size, settings.local_scale, settings.swap_prob, generator)
            for _ in range(settings.local_crops)
        ]
        global_views = normalise(global_views)
        patch_masks = None
        if settings.ibot:
            patch_masks = random_patch_masks(global_views.shape[0], (global_size // patch) ** 2, settings, generator)
        with torch.no_grad():
            t_cls, t_patch = teacher(global_views, patches=patch_masks)
        s_cls, s_patch = student(global_views, patch_masks, patches=patch_masks)
        s_local = [student(normalise(v))[0] for v in local_views] if local_views else []
        loss = dino_loss(torch.cat([s_cls, *s_local]), t_cls, center, settings.student_temp, teacher_temp, views_per_image)
        if settings.ibot:
            loss = loss + ibot_loss(s_patch, t_patch, patch_masks, patch_center, settings.student_temp, teacher_temp)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, settings.clip_grad)
        optimizer.step()
        with torch.no_grad():
            for p_s, p_t in zip(student.parameters(), teacher.parameters()):
                p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)
            m = settings.center_momentum
            center.mul_(m).add_(t_cls.mean(0, keepdim=True), alpha=1 - m)
            if settings.ibot and t_patch.shape[0]:
                patch_center.mul_(m).add_(t_patch.mean(0, keepdim=True), alpha=1 - m)
        run.losses.append(loss.item())
    run.seconds = time.perf_counter() - start
    final = torch.cat([p.detach().flatten() for p in teacher.backbone.parameters()])
    run.teacher_moved = float((final - init).norm())
    return run
