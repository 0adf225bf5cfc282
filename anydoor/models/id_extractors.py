"""ID extractors: the reference object -> ID tokens that replace SD's text embedding.

AnyDoor (Chen et al., CVPR 2024, Sec. 3.1): the background-removed object at
224x224 goes through a frozen self-supervised backbone; its global token and
patch tokens are mapped by one trainable linear layer to the UNet's
cross-attention width. The paper's ID-extractor ablation (Table 4) compares
DINOv2 global+patch tokens, DINOv2 global token only and a CLIP image
encoder: `build_id_extractor(name)` picks one of them by name.

Contract (docs/ARCHITECTURE.md): `forward(images)` takes (B, 3, S, S) floats in
[0, 1] (S = 224) and returns (B, T, cross_attention_dim) tokens; the
normalisation is inside. `unconditional_tokens(batch_size)` are the tokens of
an all-zero image, zeros *before* normalisation (DESIGN.md 1c).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from transformers import Dinov2Config, Dinov2Model

ID_EXTRACTOR_NAMES = ("dinov2", "dinov2-global", "clip")
DINOV2_TOKENS = ("all", "global")

# DINOv2 is trained with ImageNet statistics; open_clip's OpenAI constants are
# copied here so that importing this module does not import open_clip.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architecture fields copied from a loaded Dinov2Config by `from_backbone`
# (dropout and drop-path are left out: the backbone is frozen and in eval).
_DINOV2_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "hidden_act",
    "layer_norm_eps",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "layerscale_value",
    "use_swiglu_ffn",
    "use_mask_token",
)


def interpolate_dinov2_pos_embed(pos_embed: torch.Tensor, target_grid: int = 16) -> torch.Tensor:
    """Re-grid DINOv2 positional embeddings with the original DINOv2 rule.

    DINOv2 weights carry a 37x37 grid (518 px); AnyDoor runs the encoder at
    224 px (a 16x16 grid). The original implementation interpolates bicubically
    with ``scale_factor = (target_grid + 0.1) / N`` per axis, which samples the
    grid at slightly different points than transformers' ``size=(16, 16)``
    and so gives different tokens (DESIGN.md 1c). The CLS row is kept.

    Args:
        pos_embed: (1, 1 + N*N, D) table, CLS row first.
        target_grid: side of the output patch grid (image side / patch size).

    Returns:
        (1, 1 + target_grid**2, D) table in the input dtype (computed in float32).
    """
    if not isinstance(pos_embed, torch.Tensor):
        raise TypeError(f"pos_embed must be a torch.Tensor, got {type(pos_embed).__name__}")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, 1 + N*N, D), got {tuple(pos_embed.shape)}")
    num_patches = pos_embed.shape[1] - 1
    grid = math.isqrt(num_patches)
    if num_patches < 1 or grid * grid != num_patches:
        raise ValueError(
            f"pos_embed must hold a CLS row and a square patch grid (1 + N*N rows), got {pos_embed.shape[1]} rows"
        )
    if not isinstance(target_grid, int) or target_grid < 1:
        raise ValueError(f"target_grid must be a positive int, got {target_grid!r}")

    if grid == target_grid:
        # The original rule returns the table unchanged when the grids agree.
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_row, patch_rows = pos_embed[:, :1], pos_embed[:, 1:]
    patch_grid = patch_rows.reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
    # The +0.1 keeps floor(N * scale) == target_grid despite rounding; the
    # scale (not the size) fixes where the bicubic kernel samples the grid.
    scale = (target_grid + 0.1) / grid
    patch_grid = F.interpolate(patch_grid, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    if patch_grid.shape[-2:] != (target_grid, target_grid):
        raise ValueError(f"interpolating a {grid}x{grid} grid gave {tuple(patch_grid.shape[-2:])}, not {target_grid}")
    patch_rows = patch_grid.permute(0, 2, 3, 1).reshape(1, target_grid * target_grid, dim)
    return torch.cat([cls_row, patch_rows.to(pos_embed.dtype)], dim=1)


def _check_images(images: Any, image_size: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    expected = (3, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must have shape (B, 3, {image_size}, {image_size}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    low, high = (value.item() for value in torch.aminmax(images))
    if low < 0.0 or high > 1.0:
        raise ValueError(f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")


def _reset_linear_(linear: nn.Linear, generator: torch.Generator | None) -> None:
    """nn.Linear's default init, drawn from `generator` when one is given."""
    if generator is None:
        linear.reset_parameters()
        return
    bound = 1.0 / math.sqrt(linear.in_features)
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        if linear.bias is not None:
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


class _FrozenBackboneIDExtractor(ModelMixin, ConfigMixin):
    """Shared behaviour: frozen backbone kept in eval, trainable `projector`.

    Construct subclasses with keyword arguments: diffusers' `register_to_config`
    records positional ones as "defaults", which `from_config` then drops.
    """

    image_size: int

    def _freeze_backbone(self) -> None:
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        # The backbone is frozen: keep its dropout/drop-path off even while the
        # projector trains.
        super().train(mode)
        self.backbone.eval()
        return self

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.image_size)
        mean = self.pixel_mean.to(device=images.device, dtype=images.dtype)
        std = self.pixel_std.to(device=images.device, dtype=images.dtype)
        return ((images - mean) / std).to(self.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ID tokens (B, T, cross_attention_dim) of reference images (B, 3, image_size, image_size) in [0, 1]."""
        return self.project(self.backbone_features(images))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """ID tokens from `backbone_features` (cached ones too: `anydoor.training.pair_pool`)."""
        return self.projector(features.to(self.projector.weight.dtype))

    def unconditional_tokens(self, batch_size: int = 1) -> torch.Tensor:
        """Tokens of an all-zero image (zeros before normalisation): AnyDoor's
        unconditional input for classifier-free guidance (DESIGN.md 1c)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        zeros = torch.zeros(batch_size, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        return self(zeros)


class DINOv2IDExtractor(_FrozenBackboneIDExtractor):
    """AnyDoor's ID extractor: frozen DINOv2 + one trainable linear projector.

    Paper Sec. 3.1 / DESIGN.md 1: the CLS token and the 16x16 patch tokens of
    DINOv2's last layer (``last_hidden_state``, already layer-normed) at 224 px,
    257 tokens, projected to the UNet's cross-attention width. ``tokens="global"``
    keeps the CLS token only (Table 4's "global token" arm).

    Args:
        backbone_config: keyword arguments of `transformers.Dinov2Config`
            (architecture only; its image size is ``image_size``).
        cross_attention_dim: width of the ID tokens (1024 for SD2.1).
        tokens: "all" (CLS + patches) or "global" (CLS only).
        image_size: input side in pixels (224 in AnyDoor).
    """

    @register_to_config
    def __init__(
        self,
        backbone_config: dict,
        cross_attention_dim: int = 1024,
        tokens: str = "all",
        image_size: int = 224,
    ):
        super().__init__()
        if not isinstance(backbone_config, dict):
            raise TypeError(
                f"backbone_config must be a dict of Dinov2Config arguments, got {type(backbone_config).__name__}"
            )
        if tokens not in DINOV2_TOKENS:
            raise ValueError(f"tokens must be one of {DINOV2_TOKENS}, got {tokens!r}")
        if backbone_config.get("image_size", image_size) != image_size:
            raise ValueError(
                f"backbone_config['image_size']={backbone_config['image_size']} disagrees with "
                f"image_size={image_size}; "
                "use DINOv2IDExtractor.from_backbone to re-grid a backbone trained at another size"
            )
        config = Dinov2Config(**{**backbone_config, "image_size": image_size})
        if image_size % config.patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of the patch size {config.patch_size}")

        self.image_size = image_size
        self.tokens = tokens
        self.num_tokens = 1 if tokens == "global" else 1 + (image_size // config.patch_size) ** 2
        self.cross_attention_dim = cross_attention_dim
        self.backbone = Dinov2Model(config)
        self.projector = nn.Linear(config.hidden_size, cross_attention_dim)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze_backbone()

    @classmethod
    def from_backbone(
        cls,
        backbone: Dinov2Model | str | os.PathLike,
        cross_attention_dim: int = 1024,
        tokens: str = "all",
        image_size: int = 224,
        generator: torch.Generator | None = None,
        **hub_kwargs,
    ) -> "DINOv2IDExtractor":
        """Wrap a pretrained DINOv2 (e.g. ``facebook/dinov2-giant``) as AnyDoor uses it.

        The backbone's positional grid (37x37 for the released weights) is
        re-gridded once to ``image_size / patch`` with the original DINOv2 rule
        (`interpolate_dinov2_pos_embed`, DESIGN.md 1c) and stored in a
        `Dinov2Model` configured for ``image_size``, which then uses the table
        as is. The projector is freshly initialised (nn.Linear's default init,
        drawn from ``generator`` if given, else from torch's global RNG).

        Args:
            backbone: a `Dinov2Model`, or a Hub id / local path for
                `Dinov2Model.from_pretrained` (``hub_kwargs`` go there).
        """
        if isinstance(backbone, (str, os.PathLike)):
            backbone = Dinov2Model.from_pretrained(backbone, **hub_kwargs)
        elif hub_kwargs:
            raise ValueError(f"hub_kwargs {sorted(hub_kwargs)} only apply when backbone is a Hub id or path")
        if not isinstance(backbone, Dinov2Model):
            raise TypeError(
                f"backbone must be a transformers Dinov2Model, a Hub id or a path, got {type(backbone).__name__}"
            )

        backbone_config = {key: getattr(backbone.config, key) for key in _DINOV2_ARCH_KEYS}
        state_dict = dict(backbone.state_dict())
        key = "embeddings.position_embeddings"
        state_dict[key] = interpolate_dinov2_pos_embed(state_dict[key], image_size // backbone.config.patch_size)

        device = backbone.embeddings.position_embeddings.device
        # Built on the meta device: a random init of the backbone (1.1B
        # parameters for ViT-g) would be overwritten at once.
        with torch.device("meta"):
            model = cls(
                backbone_config=backbone_config,
                cross_attention_dim=cross_attention_dim,
                tokens=tokens,
                image_size=image_size,
            )
        model.to_empty(device=device)
        model.backbone.load_state_dict(state_dict, strict=True)
        model.pixel_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        model.pixel_std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        _reset_linear_(model.projector, generator)
        return model

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's tokens the projector reads (no gradient): last_hidden_state, CLS only if global."""
        pixel_values = self._normalise(images)
        with torch.no_grad():
            hidden = self.backbone(pixel_values=pixel_values).last_hidden_state
        return hidden[:, :1] if self.tokens == "global" else hidden


class CLIPIDExtractor(_FrozenBackboneIDExtractor):
    """CLIP image encoder as ID extractor (the paper's Table 4 CLIP arm).

    The backbone is an open_clip `VisionTransformer` (e.g. OpenCLIP ViT-H/14,
    width 1280); the tokens are its class token and patch
    tokens after the final LayerNorm (``ln_post``) and before the output
    projection, 257 at 224/14, projected by one trainable linear layer.
    Normalisation uses OpenAI CLIP's mean/std.

    Args:
        vision_config: open_clip ``vision_cfg`` fields (`CLIPVisionCfg`) plus an
            optional ``quick_gelu`` flag (OpenAI-trained towers use QuickGELU).
        cross_attention_dim: width of the ID tokens.
        model_name: the open_clip model the config came from (provenance only).
    """

    @register_to_config
    def __init__(self, vision_config: dict, cross_attention_dim: int = 1024, model_name: str | None = None):
        super().__init__()
        # Imported on use: open_clip is slow to import and only this arm needs it.
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        if not isinstance(vision_config, dict):
            raise TypeError(
                f"vision_config must be a dict of open_clip vision_cfg fields, got {type(vision_config).__name__}"
            )
        vision_fields = {k: v for k, v in vision_config.items() if k != "quick_gelu"}
        try:
            vision_cfg = CLIPVisionCfg(**vision_fields)
        except TypeError as error:
            raise ValueError(f"vision_config has fields open_clip's CLIPVisionCfg does not know: {error}") from None
        if vision_cfg.timm_model_name or isinstance(vision_cfg.layers, (tuple, list)) or vision_cfg.attentional_pool:
            raise ValueError(
                "vision_config must describe a plain open_clip VisionTransformer "
                f"(no timm_model_name, ResNet layers or attentional_pool), got {vision_config!r}"
            )
        image_size, patch_size = vision_cfg.image_size, vision_cfg.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
            raise ValueError(
                "vision_config needs a square int image_size divisible by patch_size, "
                f"got {image_size!r} and {patch_size!r}"
            )

        self.image_size = image_size
        self.num_tokens = 1 + (image_size // patch_size) ** 2
        self.cross_attention_dim = cross_attention_dim
        self.backbone = _build_vision_tower(
            vision_cfg.width, vision_cfg, quick_gelu=bool(vision_config.get("quick_gelu", False))
        )
        # The ID tokens are taken before the output projection, which is dropped.
        self.backbone.proj = None
        self.projector = nn.Linear(vision_cfg.width, cross_attention_dim)
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze_backbone()

    @classmethod
    def from_open_clip(
        cls,
        model_name: str = "ViT-H-14",
        pretrained: str | None = None,
        cross_attention_dim: int = 1024,
        generator: torch.Generator | None = None,
    ) -> "CLIPIDExtractor":
        """Wrap the vision tower of an open_clip model (e.g. ViT-H-14 with a
        local checkpoint file or a cached pretrained tag) with a fresh projector
        (nn.Linear's default init, drawn from ``generator`` if given)."""
        import open_clip
        from open_clip.transformer import QuickGELU

        model_config = open_clip.get_model_config(model_name)
        if model_config is None:
            raise ValueError(f"model_name {model_name!r} is not an open_clip model (see open_clip.list_models())")
        visual = open_clip.create_model(model_name, pretrained=pretrained).visual
        vision_config = dict(model_config["vision_cfg"])
        # create_model may switch to QuickGELU for OpenAI-trained tags; read
        # the activation off the built tower rather than the registry config.
        vision_config["quick_gelu"] = isinstance(visual.transformer.resblocks[0].mlp.gelu, QuickGELU)

        model = cls(vision_config=vision_config, cross_attention_dim=cross_attention_dim, model_name=model_name)
        state_dict = {k: v for k, v in visual.state_dict().items() if k != "proj"}
        model.backbone.load_state_dict(state_dict, strict=True)
        _reset_linear_(model.projector, generator)
        return model.to(visual.conv1.weight.device)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen tower's class + patch tokens after ln_post (no gradient), as the projector reads them."""
        pixel_values = self._normalise(images)
        with torch.no_grad():
            features = self.backbone.forward_intermediates(
                pixel_values,
                indices=1,  # the last block only
                normalize_intermediates=True,  # apply ln_post
                intermediates_only=True,
                output_fmt="NLC",
                output_extra_tokens=True,
            )
        return torch.cat([features["image_intermediates_prefix"][0], features["image_intermediates"][0]], dim=1)


def build_id_extractor(
    name: str,
    *,
    cross_attention_dim: int,
    backbone_config: dict | None = None,
    vision_config: dict | None = None,
) -> ModelMixin:
    """Build the ID extractor of one arm of the paper's Table 4 by name (random init).

    "dinov2": CLS + patch tokens (AnyDoor); "dinov2-global": CLS token only;
    "clip": open_clip vision tower tokens. DINOv2 arms need ``backbone_config``
    (`Dinov2Config` arguments), the CLIP arm needs ``vision_config``.
    """
    if name not in ID_EXTRACTOR_NAMES:
        raise ValueError(f"name must be one of {ID_EXTRACTOR_NAMES}, got {name!r}")
    if name == "clip":
        if vision_config is None:
            raise ValueError("vision_config (open_clip vision_cfg fields) is required for the 'clip' ID extractor")
        return CLIPIDExtractor(vision_config=vision_config, cross_attention_dim=cross_attention_dim)
    if backbone_config is None:
        raise ValueError(f"backbone_config (Dinov2Config arguments) is required for the {name!r} ID extractor")
    tokens = "global" if name == "dinov2-global" else "all"
    return DINOv2IDExtractor(backbone_config=backbone_config, cross_attention_dim=cross_attention_dim, tokens=tokens)
