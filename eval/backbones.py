"""Metric backbones: the image encoders behind CLIP-I and DINO-I.

- CLIP: an open_clip model's image tower (default ViT-B-32 with OpenAI
  weights, a common choice for CLIP-I; ViT-H-14 / laion2b_s32b_b79k as an
  option), loaded from a local weights file or the open_clip / Hugging Face
  cache. The embedding is the projected image feature (``encode_image``).
- DINO: DreamBooth's DINO metric backbone, ViT-S/16 trained with DINO
  (``facebook/dino-vits16``, transformers `ViTModel`); DINOv2
  (``facebook/dinov2-*``, `Dinov2Model`) as an option. The embedding is the
  CLS token after the final LayerNorm.

Nothing is downloaded implicitly when offline: weights that cannot be found
raise `FileNotFoundError` naming them and how to provide them.

The embedded world has metric backbones of its own (DESIGN.md section 4):
a CLIP-like image tower and a DINO-like ViT trained by `anydoor
pretrain-world` and shipped in `anydoor/world/` (`load_world_backbones`).
Their numbers are "CLIP-I (in-world)" / "DINO-I (in-world)", calibrated in
that world by the manifest's calibration table, never the paper's.

Random backbones exist only on explicit request: tiny models of the same
classes with seeded random weights, named e.g. "random-ViT-B-32-tiny";
their similarities are "CLIP-sim (random-init)", never CLIP-I or DINO-I.

Every embedder carries its ``source`` (`METRIC_SOURCES`: "real",
"in-world" or "random"), which flows into result rows as ``metric_source``
and from there into every label (`eval.metrics.metric_label`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAMILIES = ("clip", "dino")
METRIC_SOURCES = ("real", "in-world", "random")
# The `metric_backbones` option: which backbones to load ("world" are the in-world ones).
METRIC_BACKBONES = {"real": "real", "world": "in-world", "random": "random"}
# DINO / DINOv2 metric inputs: 224 px like DreamBooth's evaluation (DINOv2's
# weights carry a 518 px grid; transformers interpolates it).
DINO_IMAGE_SIZE = 224
# Random stand-ins: small enough for the tests (64 px, 16 px patches, 2 layers).
_RANDOM_IMAGE_SIZE = 64
_RANDOM_WIDTH = 32


def _hf_home() -> str:
    return os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))


def _offline(local_files_only: bool | None) -> bool:
    """None follows HF_HUB_OFFLINE, like the rest of the project's loaders."""
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


class ImageEmbedder(nn.Module):
    """An image encoder with its preprocessing: (B, 3, H, W) in [0, 1] ->
    L2-normalised (B, D) embeddings.

    Inputs are resized (bicubic, antialiased) to ``image_size`` when their
    size differs, then normalised with the backbone's mean/std. Pass square
    crops (`eval.crops.square_tensor`) to avoid distortion.

    Attributes:
        family: "clip" (``encoder(x)`` is the projected image embedding) or
            "dino" (a transformers ViT; the CLS token of ``last_hidden_state``).
        name: the backbone's name as written in result rows.
        source: "real" (downloaded weights), "in-world" (the embedded world's
            trained backbones) or "random" (random init).
    """

    def __init__(self, encoder: nn.Module, family: str, name: str, image_size: int, mean, std, source: str):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is not one of {', '.join(FAMILIES)}")
        if source not in METRIC_SOURCES:
            raise ValueError(f"source={source!r} is not one of {', '.join(METRIC_SOURCES)}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.family = family
        self.name = str(name)
        self.image_size = int(image_size)
        self.source = source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, name={self.name!r}, image_size={self.image_size}, source={self.source!r})"

    def train(self, mode: bool = True):
        # A metric backbone never leaves eval mode (dropout, patch dropout).
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (B, 3, H, W) tensor in [0, 1], got {getattr(images, 'shape', type(images).__name__)}")
        x = images.to(device=self.mean.device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0.0, 1.0)
        x = (x - self.mean) / self.std
        dtype = next(self.encoder.parameters()).dtype
        if self.family == "clip":
            features = self.encoder(x.to(dtype))
        else:
            features = self.encoder(pixel_values=x.to(dtype)).last_hidden_state[:, 0]
        return F.normalize(features.float(), dim=-1)


@dataclass
class MetricBackbones:
    """The CLIP and DINO embedders of one evaluation run (loaded once)."""

    clip: ImageEmbedder
    dino: ImageEmbedder

    def __post_init__(self):
        if self.clip.source != self.dino.source:
            raise ValueError(
                f"the CLIP ({self.clip.source}) and DINO ({self.dino.source}) metric backbones must come from "
                "one source (real, in-world or random): a table reads both"
            )

    @property
    def source(self) -> str:
        """"real", "in-world" or "random" (`METRIC_SOURCES`)."""
        return self.clip.source

    def to(self, device) -> "MetricBackbones":
        self.clip.to(device)
        self.dino.to(device)
        return self


# --------------------------------------------------------------------------- trained weights


def _clip_missing(model_name: str, pretrained: str, looked_in: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CLIP metric backbone {model_name} (pretrained={pretrained!r}) is not available locally ({looked_in}). "
        "Provide it as a local weights file (.safetensors / .bin / .pt) via clip_pretrained (CLI: --clip-pretrained PATH; "
        f"OpenAI weights need the model name {model_name}-quickgelu), or pre-populate the cache on a machine with network "
        f"access and copy it here (HF_HOME, now {_hf_home()}). On the embedded default, use its own backbones "
        "(metric_backbones='world', CLIP-I (in-world)) or random ones (metric_backbones='random'); neither is CLIP-I."
    )


def _clip_checkpoint(model_name: str, pretrained: str, local_files_only: bool | None, cache_dir) -> tuple[str, dict]:
    """Resolve an open_clip tag or file to a local checkpoint path (+ the tag's config)."""
    import open_clip
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if Path(pretrained).is_file():
        return str(pretrained), {}
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(
            f"clip_pretrained={pretrained!r} is neither a file nor an open_clip tag of {model_name}; "
            f"tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
        )
    offline = _offline(local_files_only)
    if not cfg.get("hf_hub"):
        if offline:
            raise _clip_missing(model_name, pretrained, "the tag has no Hugging Face repository and downloads are off")
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir), cfg
    repo, filename = os.path.split(cfg["hf_hub"])
    # open_clip prefers a safetensors copy of its default weights file.
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for candidate in candidates:
        try:
            return hf_hub_download(repo, candidate, cache_dir=cache_dir, local_files_only=offline), cfg
        except (EntryNotFoundError, OSError):
            continue
    raise _clip_missing(model_name, pretrained, f"looked for {repo}/{' or '.join(candidates)} in the Hugging Face cache")


def load_clip_embedder(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | os.PathLike = DEFAULT_CLIP_PRETRAINED,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImageEmbedder:
    """The image tower of an open_clip model with trained weights.

    Args:
        model_name: an open_clip model name ("ViT-B-32", "ViT-H-14", ...).
        pretrained: an open_clip tag ("openai", "laion2b_s32b_b79k", ...),
            resolved through the Hugging Face cache, or a local weights file.
        local_files_only: True: never download; None: follow HF_HUB_OFFLINE.
    """
    import open_clip

    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"model_name={model_name!r} is not an open_clip model; e.g. {DEFAULT_CLIP_MODEL}, ViT-H-14")
    pretrained = str(pretrained)
    checkpoint, cfg = _clip_checkpoint(model_name, pretrained, local_files_only, cache_dir)
    preprocess = {k: cfg[k] for k in ("mean", "std") if k in cfg}
    model = open_clip.create_model(
        model_name,
        pretrained=checkpoint,
        # A file path loses the tag's settings: OpenAI weights were trained with QuickGELU.
        force_quick_gelu=bool(cfg.get("quick_gelu", False)),
        force_preprocess_cfg=preprocess or None,
    )
    visual = model.visual
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    tag = pretrained if cfg else Path(pretrained).name
    return ImageEmbedder(
        visual, "clip", f"{model_name}/{tag}", size,
        preprocess_cfg.get("mean", OPENAI_CLIP_MEAN), preprocess_cfg.get("std", OPENAI_CLIP_STD), source="real",
    )


def load_dino_embedder(model_name: str | os.PathLike = DEFAULT_DINO_MODEL, local_files_only: bool | None = None) -> ImageEmbedder:
    """DINO (``facebook/dino-vits16``, `ViTModel`) or DINOv2 (``facebook/dinov2-*``,
    `Dinov2Model`) with trained weights, from a local folder or the Hugging Face cache."""
    from transformers import AutoConfig, Dinov2Model, ViTModel

    source = str(model_name)
    offline = True if Path(source).is_dir() else _offline(local_files_only)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type == "vit":
            # DINO checkpoints have no pooler (ViTModel's would be random).
            encoder = ViTModel.from_pretrained(source, add_pooling_layer=False, local_files_only=offline)
        elif config.model_type == "dinov2":
            encoder = Dinov2Model.from_pretrained(source, local_files_only=offline)
        else:
            raise ValueError(
                f"dino model {source!r} is a {config.model_type!r} model; expected a DINO ViT "
                f"({DEFAULT_DINO_MODEL}) or DINOv2 (facebook/dinov2-small, ...)"
            )
    except OSError as err:
        raise FileNotFoundError(
            f"DINO metric backbone {source!r} is not available locally ({str(err).splitlines()[0]}). "
            f"Provide it as a local folder (save_pretrained layout) via dino_model (CLI: --dino-model DIR), or "
            f"pre-populate the Hugging Face cache on a machine with network access (`hf download {source}`) and copy "
            f"it here (HF_HOME, now {_hf_home()}). On the embedded default, use its own backbones "
            "(metric_backbones='world', DINO-I (in-world)) or random ones (metric_backbones='random'); neither is DINO-I."
        ) from None
    return ImageEmbedder(encoder, "dino", source, DINO_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, source="real")


# --------------------------------------------------------------------------- random weights


def _seed_from(generator: torch.Generator | None) -> int:
    if generator is None:
        return 0
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def _build_seeded(build, generator: torch.Generator | None) -> nn.Module:
    """Run a constructor whose initialisers draw from torch's global RNG with
    that RNG seeded from `generator`, leaving the caller's global state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_from(generator))
        return build()


def random_clip_embedder(model_name: str = DEFAULT_CLIP_MODEL, generator: torch.Generator | None = None) -> ImageEmbedder:
    """A tiny open_clip `VisionTransformer` (the class of CLIP's image tower)
    with random weights, named "random-<model_name>-tiny"; source "random"."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = CLIPVisionCfg(
        layers=2, width=_RANDOM_WIDTH, head_width=16, mlp_ratio=2.0, patch_size=16, image_size=_RANDOM_IMAGE_SIZE
    )
    encoder = _build_seeded(lambda: _build_vision_tower(_RANDOM_WIDTH, cfg), generator)
    return ImageEmbedder(
        encoder, "clip", f"random-{model_name}-tiny", _RANDOM_IMAGE_SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, source="random"
    )


def random_dino_embedder(model_name: str | os.PathLike = DEFAULT_DINO_MODEL, generator: torch.Generator | None = None) -> ImageEmbedder:
    """A tiny transformers `ViTModel` (DINO) or `Dinov2Model` (when
    `model_name` names DINOv2) with random weights, named
    "random-<model>-tiny"; source "random"."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    short = Path(str(model_name)).name
    shape = dict(
        hidden_size=_RANDOM_WIDTH, num_hidden_layers=2, num_attention_heads=2,
        image_size=_RANDOM_IMAGE_SIZE, patch_size=16,
    )
    if "dinov2" in short.lower():
        build = lambda: Dinov2Model(Dinov2Config(mlp_ratio=2, **shape))  # noqa: E731
    else:
        build = lambda: ViTModel(ViTConfig(intermediate_size=2 * _RANDOM_WIDTH, **shape), add_pooling_layer=False)  # noqa: E731
    encoder = _build_seeded(build, generator)
    return ImageEmbedder(
        encoder, "dino", f"random-{short}-tiny", _RANDOM_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, source="random"
    )


# --------------------------------------------------------------------------- the embedded world's


WORLD_CLIP_NAME = "world-clip-i"
WORLD_DINO_NAME = "world-dino-i"


def load_world_backbones(root=None) -> "MetricBackbones":
    """The embedded world's CLIP-I and DINO-I backbones (`anydoor/world/`, hash-checked)."""
    import json

    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from safetensors.torch import load_file
    from transformers import ViTModel

    from anydoor.world import METRIC_CLIP_DIR, METRIC_DINO_DIR, verified_folder

    clip_dir = verified_folder(METRIC_CLIP_DIR, root)
    config = json.loads((clip_dir / "vision_config.json").read_text())
    vision = CLIPVisionCfg(**config["vision_cfg"])
    tower = _build_vision_tower(config["embed_dim"], vision)
    tower.load_state_dict(load_file(str(clip_dir / "model.safetensors")), strict=True)
    dino = ViTModel.from_pretrained(verified_folder(METRIC_DINO_DIR, root), add_pooling_layer=False)
    return MetricBackbones(
        ImageEmbedder(tower, "clip", WORLD_CLIP_NAME, vision.image_size, config["mean"], config["std"], source="in-world"),
        ImageEmbedder(dino, "dino", WORLD_DINO_NAME, dino.config.image_size, IMAGENET_MEAN, IMAGENET_STD,
                      source="in-world"),
    )


def check_metric_backbones(metric_backbones: str) -> str:
    """`metric_backbones` if it is one of `METRIC_BACKBONES` ("real", "world", "random"), else a ValueError."""
    if metric_backbones not in METRIC_BACKBONES:
        raise ValueError(
            f"metric_backbones={metric_backbones!r} is not one of {', '.join(METRIC_BACKBONES)} "
            "(real: downloaded CLIP/DINO weights; world: the embedded world's; random: random init)"
        )
    return metric_backbones


def load_backbones(
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str | os.PathLike = DEFAULT_CLIP_PRETRAINED,
    dino_model: str | os.PathLike = DEFAULT_DINO_MODEL,
    metric_backbones: str = "real",
    local_files_only: bool | None = None,
    generator: torch.Generator | None = None,
) -> MetricBackbones:
    """Both metric backbones, once per run.

    `metric_backbones`: "real" loads trained weights (missing ones raise
    `FileNotFoundError` saying how to provide them; never a silent fallback),
    "world" the embedded world's shipped backbones, "random" tiny random
    stand-ins (the explicit opt-in; `generator` seeds them).
    """
    check_metric_backbones(metric_backbones)
    if metric_backbones == "world":
        return load_world_backbones()
    if metric_backbones == "random":
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        return MetricBackbones(random_clip_embedder(clip_model, generator), random_dino_embedder(dino_model, generator))
    return MetricBackbones(
        load_clip_embedder(clip_model, clip_pretrained, local_files_only),
        load_dino_embedder(dino_model, local_files_only),
    )
