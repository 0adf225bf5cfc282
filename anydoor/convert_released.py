"""Convert the released AnyDoor checkpoint to an `AnyDoorPipeline` folder.

The authors release one PyTorch Lightning file (LDM naming) holding the
SD2.1-base UNet (``model.diffusion_model.``), the detail extractor
(``control_model.``, ControlNet naming), the VAE (``first_stage_model.``),
DINOv2 ViT-g/14 in its original naming (``cond_stage_model.model.``), the ID
projector (``cond_stage_model.projector.``) and the training schedule
buffers. DESIGN.md 1c lists what a faithful conversion needs:

- the UNet, ControlNet and VAE go through diffusers' own LDM converters;
- the ControlNet's latent conv (``control_model.input_blocks.0.0``) is never
  used by the released forward: it is discarded and ``conv_in`` stays zero;
- DINOv2's fused ``qkv`` and SwiGLU ``w12`` are split into transformers'
  projections, and its 37x37 positional grid is re-gridded once to 16x16
  with the original DINOv2 rule, for a `Dinov2Model` configured for 224 px.

Every source tensor is either kept (mapped to exactly the parameters of the
models built from the config) or belongs to a named group of deliberately
ignored keys; anything else is an error that names the tensor. The mapping
(`map_released_state_dict`) works on meta tensors, so the full key set can be
checked without the 17 GB file.

Memory: the file is memory-mapped, the models are built without allocating
their weights and take the mapped tensors (or views of them) as they are,
so a conversion needs about the size of the kept weights, not the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import shutil
import types
import uuid
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# The authors' model YAML (configs/anydoor.yaml) for SD2.1-base, restricted
# to what the conversion reads. `model.params.image_size` is the latent side
# the model trains at; the UNet's own `image_size` is marked unused there.
_UNET_PARAMS = dict(
    use_checkpoint=True,
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
    legacy=False,
)
RELEASED_CONFIG = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "timesteps": 1000,
            "image_size": 64,
            "channels": 4,
            "scale_factor": 0.18215,
            "use_ema": False,
            "control_stage_config": {"params": {**_UNET_PARAMS, "hint_channels": 4}},
            "unet_config": {"params": dict(_UNET_PARAMS)},
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": dict(
                        double_z=True,
                        z_channels=4,
                        resolution=256,
                        in_channels=3,
                        out_ch=3,
                        ch=128,
                        ch_mult=[1, 2, 4, 4],
                        num_res_blocks=2,
                        attn_resolutions=[],
                        dropout=0.0,
                    ),
                }
            },
        }
    }
}

PREFIXES = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "vae": "first_stage_model.",
    "dinov2": "cond_stage_model.model.",
    "projector": "cond_stage_model.projector.",
}
# LatentDiffusion's registered schedule buffers: the pipeline's scheduler is
# rebuilt from the config (and `betas` checked against it).
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
)
UNUSED_CONTROL_CONV = "control_model.input_blocks.0.0."
EMA_PREFIX = "model_ema."
IGNORED_GROUPS = {
    "schedule_buffers": "LatentDiffusion's noise-schedule buffers (the scheduler is rebuilt from the config)",
    "control_model.input_blocks.0.0": "the detail extractor's latent conv, unused by the released forward "
    "(conv_in stays zero, DESIGN.md 1c)",
    "model_ema": "EMA copies (the released model samples with the trained weights)",
}
DINOV2_HEAD_WIDTH = 64  # DINOv2 heads are 64 wide (ViT-g/14: 1536 / 64 = 24 heads)
ID_IMAGE_SIZE = 224  # AnyDoor runs DINOv2 at 224 px

# A torch.save file before torch 1.6 is a bare pickle that starts with this
# magic number (pickled as a 10-byte long).
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_MAX_LISTED = 8


# ----------------------------------------------------------------- loading
@dataclass
class LoadedCheckpoint:
    """A checkpoint's state dict and how it was read."""

    state_dict: dict
    format: str  # "zip" (torch >= 1.6, memory-mapped) or "legacy" (read into memory)
    lightning_keys: list[str] = field(default_factory=list)  # ignored top-level entries
    notes: list[str] = field(default_factory=list)


class _Unavailable:
    """Stand-in for a pickled object whose class cannot be imported (trusted
    loads only): the Lightning state around the weights is ignored anyway."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _lenient_pickle_module(missing: set[str]) -> types.ModuleType:
    """A pickle module for trusted loads whose unimportable classes become
    `_Unavailable` stand-ins (their names are added to ``missing``)."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                missing.add(f"{module}.{name}")
                return type(name, (_Unavailable,), {"__module__": module})

    pickle_module = types.ModuleType("anydoor_lenient_pickle")
    pickle_module.Unpickler = Unpickler
    pickle_module.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    return pickle_module


def _checkpoint_format(path: Path) -> str:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise ValueError(f"checkpoint {str(path)!r} is a zip archive but not a PyTorch checkpoint (no data.pkl)")
        return "zip"
    with open(path, "rb") as f:
        head = f.read(14)
    if len(head) == 14 and head[0] == 0x80 and head[2:4] == b"\x8a\x0a" and head[4:] == _LEGACY_MAGIC:
        return "legacy"
    raise ValueError(
        f"checkpoint {str(path)!r} is not a PyTorch checkpoint: it starts with {head[:8]!r}, neither a "
        "torch.save zip archive nor a legacy torch pickle (pass the released .ckpt file)"
    )


def _refused_globals(path: Path, fmt: str, err: Exception) -> list[str]:
    names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if fmt == "zip":
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or names
        except Exception:  # the error message already named one; keep it
            pass
    return sorted(set(names))


def load_checkpoint(checkpoint: str | os.PathLike, trust_checkpoint: bool = False) -> LoadedCheckpoint:
    """Read a Lightning checkpoint or a bare state dict, safely by default.

    ``torch.load(weights_only=True, mmap=True)``: tensors stay on disk until
    read and no code from the file runs. A file that pickles Python objects
    (Lightning callbacks, hyper-parameters) is refused with the names of the
    objects, unless ``trust_checkpoint`` is set: then the file is unpickled
    (which can run code from it), classes that cannot be imported becoming
    inert stand-ins. Files saved before torch 1.6 cannot be memory-mapped and
    are read into memory (noted).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    fmt = _checkpoint_format(path)
    mmap = fmt == "zip"
    notes = [] if mmap else [
        "legacy (pre-zip) torch file: read into memory, not memory-mapped; re-save it with torch.save "
        "to convert with less memory"
    ]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, fmt, err)
        if not refused:
            raise ValueError(f"checkpoint {str(path)!r} could not be read: {str(err).splitlines()[0]}") from None
        if not trust_checkpoint:
            raise ValueError(
                f"checkpoint {str(path)!r} pickles Python objects that safe loading (weights_only) refuses: "
                f"{', '.join(refused)}. If you trust the file's source, pass trust_checkpoint=True "
                "(CLI: --trust-checkpoint): it unpickles the file, which can run code from it."
            ) from None
        missing: set[str] = set()
        try:
            obj = torch.load(
                path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_lenient_pickle_module(missing)
            )
        except Exception as err:  # anything the file's own objects raise while unpickling
            raise ValueError(f"checkpoint {str(path)!r} could not be unpickled: {type(err).__name__}: {err}") from err
        notes.append(f"unpickled with trust_checkpoint (objects: {', '.join(refused)})")
        if missing:
            notes.append(f"classes not importable, replaced by stand-ins: {', '.join(sorted(missing))}")
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"checkpoint {str(path)!r} could not be read: {type(err).__name__}: {err}") from None

    lightning_keys = []
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        lightning_keys = sorted(str(k) for k in obj if k != "state_dict")
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict or a Lightning checkpoint")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"checkpoint {str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor "
                "(expected a state dict, or a Lightning checkpoint with a 'state_dict')"
            )
    return LoadedCheckpoint(dict(obj), fmt, lightning_keys, notes)


# ------------------------------------------------------------------ config
def _at(config: Mapping, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"config has no {dotted!r} (the authors' configs/anydoor.yaml layout)")
        node = node[part]
    return node


def read_config(config: str | os.PathLike | Mapping | None) -> dict:
    """The authors' model config (a YAML path or its parsed dict); None: the
    released defaults (`RELEASED_CONFIG`). Checked for what the conversion reads."""
    if config is None:
        return copy.deepcopy(RELEASED_CONFIG)
    if not isinstance(config, (Mapping, str, os.PathLike)):
        raise TypeError(f"config must be a YAML path, a dict or None, got {type(config).__name__}")
    if not isinstance(config, Mapping):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config {str(path)!r} does not exist or is not a file")
        try:
            config = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"config {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"config {str(path)!r} holds a {type(config).__name__}, not a mapping")

    unet = _at(config, "model.params.unet_config.params")
    for key in ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                "channel_mult", "transformer_depth", "context_dim"):
        _at(unet, key)
    if not unet.get("use_linear_in_transformer", False) or "num_head_channels" not in unet:
        raise ValueError(
            "config model.params.unet_config.params must set use_linear_in_transformer: True and num_head_channels "
            "(SD2.x layout); other layouts are not supported by this converter"
        )
    control = _at(config, "model.params.control_stage_config.params")
    _at(control, "hint_channels")
    for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_head_channels",
                "transformer_depth", "context_dim", "in_channels", "use_linear_in_transformer"):
        if key in control and control[key] != unet.get(key):
            raise ValueError(
                f"config control_stage_config.params.{key}={control[key]!r} differs from unet_config.params.{key}="
                f"{unet.get(key)!r}: the detail extractor must copy the UNet encoder"
            )
    ddconfig = _at(config, "model.params.first_stage_config.params.ddconfig")
    for key in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
        _at(ddconfig, key)
    if ddconfig.get("attn_resolutions"):
        raise ValueError(f"config ddconfig.attn_resolutions={ddconfig['attn_resolutions']!r}: diffusers' VAE has none")
    embed_dim = config["model"]["params"]["first_stage_config"]["params"].get("embed_dim", ddconfig["z_channels"])
    if embed_dim != ddconfig["z_channels"]:
        raise ValueError(f"config first_stage_config embed_dim={embed_dim} differs from z_channels={ddconfig['z_channels']}")
    params = config["model"]["params"]
    if params.get("parameterization", "eps") != "eps":
        raise ValueError(
            f"config model.params.parameterization={params['parameterization']!r}: AnyDoor predicts eps (SD2.1-base)"
        )
    if params.get("beta_schedule", "linear") != "linear":
        raise ValueError(f"config model.params.beta_schedule={params['beta_schedule']!r}: the released model uses 'linear'")
    return config


def _image_size(config: Mapping) -> int:
    """The pipeline's image side: the latent side times the VAE factor. The
    latent side is LatentDiffusion's `image_size` (the UNet's own is marked
    unused in the authors' YAML), the UNet's when the former is absent."""
    params = config["model"]["params"]
    latent = params.get("image_size", params["unet_config"]["params"].get("image_size"))
    if not isinstance(latent, int) or latent < 1:
        raise ValueError(f"config model.params.image_size={latent!r} is not a positive int (the latent side)")
    return latent * 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)


def _scheduler(config: Mapping):
    """The released DDIM sampler with the config's training schedule (scaled
    linear betas: LDM's "linear" schedule interpolates sqrt(beta))."""
    from diffusers import DDIMScheduler

    from anydoor.presets import sampling_scheduler as released_scheduler

    params = config["model"]["params"]
    base = released_scheduler().config
    return DDIMScheduler.from_config(
        base,
        beta_start=params.get("linear_start", base.beta_start),
        beta_end=params.get("linear_end", base.beta_end),
        num_train_timesteps=params.get("timesteps", base.num_train_timesteps),
    )


# ----------------------------------------------------------------- mapping
@dataclass
class ConversionPlan:
    """Where every source tensor goes (`map_released_state_dict`).

    modules: component -> model built from the config without weights.
    state_dicts: component -> the module's state dict (source tensors or
        views of them; `conv_in` zeros and the re-gridded positional table
        are new).
    sources: component -> module key -> source key (None: made here).
    ignored: group -> source keys deliberately not converted.
    """

    modules: dict[str, nn.Module]
    state_dicts: dict[str, dict[str, torch.Tensor]]
    sources: dict[str, dict[str, str | None]]
    ignored: dict[str, list[str]]
    image_size: int
    scheduler: object

    @property
    def kept(self) -> list[str]:
        """Source keys whose tensors are converted, sorted."""
        return sorted({s for mapping in self.sources.values() for s in mapping.values() if s is not None})


def _subset(state_dict: Mapping, prefix: str) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith(prefix)}


def _traced(converted: dict, source: dict) -> tuple[dict, dict]:
    """Attach source names to a diffusers converter's output by tensor identity
    (the converters pass tensors through or slice them: a view's `_base`)."""
    owner: dict[int, str] = {id(t): k for k, t in source.items()}
    tensors, sources = {}, {}
    for key, tensor in converted.items():
        if tensor is None:  # the converter looked up a source key that is missing
            continue
        name = owner.get(id(tensor)) or owner.get(id(tensor._base))
        if name is None:
            raise RuntimeError(f"cannot trace {key!r} to a source tensor")  # diffusers changed its converters
        tensors[key], sources[key] = tensor, name
    return tensors, sources


def _ldm_components(state_dict: Mapping, config: Mapping, image_size: int) -> tuple[dict, dict, dict, dict]:
    """UNet, ControlNet and VAE through diffusers' converters (DESIGN.md 1c)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    from anydoor.models.detail_extractor import build_detail_extractor

    unet_src = _subset(state_dict, PREFIXES["unet"])
    control_src = _subset(state_dict, PREFIXES["controlnet"])
    vae_src = _subset(state_dict, PREFIXES["vae"])
    with warnings.catch_warnings():
        # `image_size` is deprecated there, but without it diffusers guesses
        # 768 px from the 1024-wide cross-attention (SD2.1-v): wrong here.
        warnings.simplefilter("ignore", FutureWarning)
        unet_config = sfu.create_unet_diffusers_config_from_ldm(config, unet_src, image_size=image_size)
        vae_config = sfu.create_vae_diffusers_config_from_ldm(config, vae_src, image_size=image_size)
    hint_channels = config["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    hint = _hint_channels(control_src, hint_channels)
    if 2 ** (len(hint) - 1) != 2 ** (len(vae_config["block_out_channels"]) - 1):
        raise ValueError(
            f"control_model.input_hint_block downsamples x{2 ** (len(hint) - 1)} but the VAE "
            f"x{2 ** (len(vae_config['block_out_channels']) - 1)}: the hint would not match the latents"
        )

    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        # create_controlnet_diffusers_config_from_ldm is broken in diffusers
        # 0.42: the ControlNet config is the UNet's plus the hint embedding.
        controlnet = build_detail_extractor(unet, hint, conditioning_channels=hint_channels)
    modules = dict(unet=unet, controlnet=controlnet, vae=vae)

    state_dicts, sources = {}, {}
    for name, converted, source in (
        ("unet", sfu.convert_ldm_unet_checkpoint(unet_src, unet_config), unet_src),
        ("controlnet", sfu.convert_controlnet_checkpoint(control_src, unet_config), control_src),
        ("vae", sfu.convert_ldm_vae_checkpoint(vae_src, vae_config), vae_src),
    ):
        state_dicts[name], sources[name] = _traced(converted, source)
    # The released branch never reads the latent (DESIGN.md 1c): its
    # input_blocks.0.0 tensors are dropped and conv_in is zero.
    reference = next(iter(control_src.values()), None)
    for key in ("conv_in.weight", "conv_in.bias"):
        state_dicts["controlnet"].pop(key, None)
        sources["controlnet"].pop(key, None)
        like = controlnet.state_dict()[key]
        state_dicts["controlnet"][key] = torch.zeros(
            like.shape,
            dtype=like.dtype if reference is None else reference.dtype,
            device="meta" if reference is not None and reference.is_meta else "cpu",
        )
        sources["controlnet"][key] = None
    return modules, state_dicts, sources, dict(unet=unet_config, vae=vae_config)


def _hint_channels(control_src: Mapping, hint_channels: int) -> tuple[int, ...]:
    """conditioning_embedding_out_channels from the input_hint_block convs:
    pairs of 3x3 convs, the first of each level keeping its width (as diffusers'
    converter, which expects input_hint_block.0 ... .14, i.e. four levels)."""
    prefix = PREFIXES["controlnet"] + "input_hint_block."
    indices = sorted({int(k[len(prefix):].split(".")[0]) for k in control_src if k.startswith(prefix)})
    if indices != list(range(0, 15, 2)):
        raise ValueError(
            f"{prefix}* has convs {indices}; diffusers' converter expects 0, 2, ..., 14 "
            "(four levels, as conditioning_embedding_out_channels=(16, 32, 96, 256))"
        )
    first = control_src.get(f"{prefix}0.weight")
    if first is None or first.ndim != 4 or first.shape[1] != hint_channels:
        shape = None if first is None else tuple(first.shape)
        raise ValueError(f"{prefix}0.weight has shape {shape}; the config's hint_channels={hint_channels}")
    return tuple(int(control_src[f"{prefix}{i}.weight"].shape[0]) for i in (0, 4, 8, 12))


def dinov2_config_from_state_dict(state_dict: Mapping, prefix: str = PREFIXES["dinov2"]) -> dict:
    """`Dinov2Config` arguments read off original-naming DINOv2 tensors:
    width from cls_token, depth from the block indices, 64-wide heads, patch
    from the patch-embedding kernel, the SwiGLU width from ``w12``."""
    def tensor(name: str) -> torch.Tensor:
        if prefix + name not in state_dict:
            raise ValueError(f"checkpoint has no {prefix + name} (DINOv2 ViT-g/14 in its original naming)")
        return state_dict[prefix + name]

    width = int(tensor("cls_token").shape[-1])
    if width % DINOV2_HEAD_WIDTH:
        raise ValueError(f"{prefix}cls_token is {width} wide, not a multiple of DINOv2's {DINOV2_HEAD_WIDTH}-wide heads")
    blocks = sorted({int(k[len(prefix) + 7:].split(".")[0]) for k in state_dict if k.startswith(prefix + "blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"{prefix}blocks.* has block indices {blocks[:5]}...; expected 0, 1, ..., depth-1")
    if prefix + "blocks.0.mlp.w12.weight" not in state_dict:
        raise ValueError(f"{prefix}blocks.0.mlp.w12.weight is missing: only DINOv2's SwiGLU layout (ViT-g/14) is supported")
    hidden = int(tensor("blocks.0.mlp.w12.weight").shape[0]) // 2
    # transformers derives the SwiGLU width from an integer mlp_ratio with
    # DINOv2's rule (two thirds, rounded up to a multiple of 8).
    ratios = [r for r in range(1, 17) if (int(width * r * 2 / 3) + 7) // 8 * 8 == hidden]
    if not ratios:
        raise ValueError(
            f"{prefix}blocks.0.mlp.w12.weight has shape {tuple(tensor('blocks.0.mlp.w12.weight').shape)}: "
            f"a SwiGLU width of {hidden} matches no DINOv2 mlp_ratio at width {width}"
        )
    kernel = tensor("patch_embed.proj.weight").shape
    return dict(
        hidden_size=width,
        num_hidden_layers=len(blocks),
        num_attention_heads=width // DINOV2_HEAD_WIDTH,
        mlp_ratio=ratios[0],
        layer_norm_eps=1e-6,
        patch_size=int(kernel[-1]),
        num_channels=int(kernel[1]),
        qkv_bias=prefix + "blocks.0.attn.qkv.bias" in state_dict,
        layerscale_value=1.0,
        use_swiglu_ffn=True,
        use_mask_token=prefix + "mask_token" in state_dict,
    )


def _dinov2_component(state_dict: Mapping, cross_attention_dim: int) -> tuple[nn.Module, dict, dict]:
    """DINOv2 (original naming) + projector -> `DINOv2IDExtractor` (DESIGN.md 1c)."""
    from accelerate import init_empty_weights

    from anydoor.models.id_extractors import DINOv2IDExtractor, interpolate_dinov2_pos_embed

    src, proj = PREFIXES["dinov2"], PREFIXES["projector"]
    backbone_config = dinov2_config_from_state_dict(state_dict)
    if backbone_config["patch_size"] <= 0 or ID_IMAGE_SIZE % backbone_config["patch_size"]:
        raise ValueError(f"{src}patch_embed.proj.weight: patch {backbone_config['patch_size']} does not divide {ID_IMAGE_SIZE}")
    with init_empty_weights(include_buffers=False):
        module = DINOv2IDExtractor(
            backbone_config=backbone_config, cross_attention_dim=cross_attention_dim, tokens="all",
            image_size=ID_IMAGE_SIZE,
        )

    tensors, sources = {}, {}

    def take(source: str, target: str, part: int | None = None, parts: int = 1) -> None:
        if source not in state_dict:
            return  # reported as a missing key, by its module name and source name
        value = state_dict[source]
        tensors[target] = value if part is None else value.chunk(parts, dim=0)[part]
        sources[target] = source

    take(src + "cls_token", "backbone.embeddings.cls_token")
    take(src + "mask_token", "backbone.embeddings.mask_token")
    take(src + "patch_embed.proj.weight", "backbone.embeddings.patch_embeddings.projection.weight")
    take(src + "patch_embed.proj.bias", "backbone.embeddings.patch_embeddings.projection.bias")
    for i in range(backbone_config["num_hidden_layers"]):
        s, t = f"{src}blocks.{i}.", f"backbone.encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            take(f"{s}norm1.{suffix}", f"{t}norm1.{suffix}")
            # qkv is one (3D, D) linear: its thirds are q, k, v in that order
            for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
                take(f"{s}attn.qkv.{suffix}", f"{t}attention.{name}.{suffix}", part, 3)
            take(f"{s}attn.proj.{suffix}", f"{t}attention.o_proj.{suffix}")
            take(f"{s}norm2.{suffix}", f"{t}norm2.{suffix}")
            # SwiGLU: w12's first half is the SiLU-gated side, its second half the linear one
            take(f"{s}mlp.w12.{suffix}", f"{t}mlp.gate_proj.{suffix}", 0, 2)
            take(f"{s}mlp.w12.{suffix}", f"{t}mlp.up_proj.{suffix}", 1, 2)
            take(f"{s}mlp.w3.{suffix}", f"{t}mlp.down_proj.{suffix}")
        take(f"{s}ls1.gamma", f"{t}layer_scale1.lambda1")
        take(f"{s}ls2.gamma", f"{t}layer_scale2.lambda1")
    take(src + "norm.weight", "backbone.layernorm.weight")
    take(src + "norm.bias", "backbone.layernorm.bias")
    take(proj + "weight", "projector.weight")
    take(proj + "bias", "projector.bias")

    # The model runs at 224 px with a 16x16 grid: re-grid the 37x37 table once
    # with the original DINOv2 rule (transformers' own resize differs, DESIGN.md 1c).
    pos_embed = state_dict.get(src + "pos_embed")
    if pos_embed is not None:
        target = "backbone.embeddings.position_embeddings"
        grid = ID_IMAGE_SIZE // backbone_config["patch_size"]
        if pos_embed.is_meta:
            tensors[target] = torch.empty(1, 1 + grid * grid, pos_embed.shape[-1], dtype=pos_embed.dtype, device="meta")
        else:
            try:
                tensors[target] = interpolate_dinov2_pos_embed(pos_embed.float(), grid).to(pos_embed.dtype)
            except ValueError as err:
                raise ValueError(f"{src}pos_embed: {err}") from None
        sources[target] = src + "pos_embed"
    return module, tensors, sources


def _source_name(component: str, key: str, plan_sources: Mapping) -> str:
    name = plan_sources.get(key)
    return f"{name} (-> {component}.{key})" if name else f"{component}.{key}"


def map_released_state_dict(state_dict: Mapping, config: str | os.PathLike | Mapping | None = None) -> ConversionPlan:
    """Map a released-layout state dict onto AnyDoorPipeline's components.

    Accounts for every key: each is converted or in a named ignored group
    (`IGNORED_GROUPS`); an unknown, left-over or missing key, or a shape the
    config does not predict, raises a ValueError naming the tensors. Works on
    meta tensors (no weights are read or copied).

    Args:
        state_dict: the checkpoint's state dict (`load_checkpoint`).
        config: the authors' model YAML (path or dict); None: `RELEASED_CONFIG`.
    """
    source = "released defaults" if config is None else "given"
    config = read_config(config)
    image_size = _image_size(config)

    ignored = {
        "schedule_buffers": sorted(k for k in state_dict if k in SCHEDULE_BUFFERS),
        "control_model.input_blocks.0.0": sorted(k for k in state_dict if k.startswith(UNUSED_CONTROL_CONV)),
        "model_ema": sorted(k for k in state_dict if k.startswith(EMA_PREFIX)),
    }
    unknown = [
        k for k in state_dict
        if not k.startswith(tuple(PREFIXES.values())) and k not in SCHEDULE_BUFFERS and not k.startswith(EMA_PREFIX)
    ]
    if unknown:
        raise ValueError(_listing(
            f"{len(unknown)} checkpoint keys belong to no part of AnyDoor and no ignored group",
            [repr(k) for k in sorted(unknown)],
        ))

    modules, state_dicts, sources, configs = _ldm_components(state_dict, config, image_size)
    context_dim = configs["unet"]["cross_attention_dim"]
    modules["id_extractor"], state_dicts["id_extractor"], sources["id_extractor"] = _dinov2_component(
        state_dict, context_dim
    )

    # Accounting: every source key converted once or ignored on purpose.
    used = {s for mapping in sources.values() for s in mapping.values() if s is not None}
    leftover = sorted(set(state_dict) - used - {k for keys in ignored.values() for k in keys})
    problems = {"with another shape": [], "missing": [], "without a place": [], "unused": []}
    problems["unused"] = [f"{k!r} is not used by the model built from the config" for k in leftover]
    for component, module in modules.items():
        expected = module.state_dict()
        got, src = state_dicts[component], sources[component]
        problems["with another shape"] += [
            f"{_source_name(component, k, src)} has shape {tuple(got[k].shape)} in the checkpoint, "
            f"the config gives {tuple(expected[k].shape)}"
            for k in sorted(set(expected) & set(got))
            if tuple(got[k].shape) != tuple(expected[k].shape)
        ]
        problems["missing"] += [f"checkpoint has no tensor for {component}.{k}" for k in sorted(set(expected) - set(got))]
        problems["without a place"] += [
            f"{_source_name(component, k, src)} has no place in the {component} built from the config"
            for k in sorted(set(got) - set(expected))
        ]
    if any(problems.values()):
        counts = ", ".join(f"{len(v)} {kind}" for kind, v in problems.items() if v)
        shown = [line for lines in problems.values() for line in lines[: _MAX_LISTED // 2]]
        raise ValueError(
            f"the checkpoint does not match the config ({source}); tensors {counts}:\n  " + "\n  ".join(shown)
        )

    scheduler = _scheduler(config)
    betas = state_dict.get("betas")
    if betas is not None and not betas.is_meta:
        if betas.shape != scheduler.betas.shape or not torch.allclose(
            betas.double(), scheduler.betas.double(), rtol=1e-4, atol=1e-7
        ):
            raise ValueError(
                "checkpoint 'betas' differ from the config's schedule (scaled linear "
                f"{scheduler.config.beta_start}..{scheduler.config.beta_end}, {scheduler.config.num_train_timesteps} steps)"
            )
    return ConversionPlan(modules, state_dicts, sources, ignored, image_size, scheduler)


def _listing(headline: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n  ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"{headline}:\n  " + "\n  ".join(shown) + more


# -------------------------------------------------------------- assembling
def assemble_pipeline(plan: ConversionPlan):
    """Load the planned tensors into the models (no copies: the modules take
    the mapped tensors) and build the pipeline with AnyDoorPipeline's released
    defaults (DDIM, control scale 1.0, HF detail map, background removal)."""
    from anydoor.models.detail_extractor import zero_conv_in
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    for component, module in plan.modules.items():
        module.load_state_dict(plan.state_dicts[component], strict=True, assign=True)
        left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"{component} has tensors without weights after loading: {left[:5]}")
        module.eval()
    zero_conv_in(plan.modules["controlnet"])  # frozen, as trained (DESIGN.md 1c)
    return AnyDoorPipeline(**plan.modules, scheduler=plan.scheduler, image_size=plan.image_size)


def tensor_digest(state_dict: Mapping, keys: list[str]) -> str:
    """sha256 of the tensors' bytes, in the order of ``keys``."""
    digest = hashlib.sha256()
    for key in keys:
        tensor = state_dict[key].detach().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _describe_config(config) -> str:
    if config is None:
        return "released defaults (anydoor.convert_released.RELEASED_CONFIG)"
    return "a given mapping" if isinstance(config, Mapping) else Path(config).name


def convert_released_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
) -> Path:
    """Convert the released AnyDoor checkpoint to a folder that
    ``AnyDoorPipeline.from_pretrained(out)`` loads (CLI: ``anydoor
    convert-released``).

    Args:
        checkpoint: the released Lightning ``.ckpt`` (or a bare state dict file).
        out: output folder; must not exist or be empty. Written to a
            temporary sibling first, so a failed conversion leaves nothing.
        config: the authors' model YAML; None: the released SD2.1-base values.
        trust_checkpoint: unpickle a file that pickles Python objects (can
            run code from it); by default such a file is refused.

    Returns:
        The output folder, holding the pipeline (safetensors) and
        ``conversion.json`` (source file, size, sha256 of the kept tensors in
        sorted name order, ignored key groups with counts, library versions).
    """
    import diffusers
    import transformers

    import anydoor

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {str(out)!r} exists and is not an empty folder")
    loaded = load_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    plan = map_released_state_dict(loaded.state_dict, config)
    kept = plan.kept
    record = {
        "source": {
            "file": Path(checkpoint).name,
            "size_bytes": Path(checkpoint).stat().st_size,
            "format": loaded.format,
            "kept_tensors": len(kept),
            "kept_sha256": tensor_digest(loaded.state_dict, kept),
            "kept_sha256_rule": "sha256 of the kept source tensors' bytes, in sorted name order",
        },
        "config": _describe_config(config),
        "ignored": {
            **{group: {"count": len(keys), "why": IGNORED_GROUPS[group]} for group, keys in plan.ignored.items() if keys},
            **({"lightning_state": {"count": len(loaded.lightning_keys), "keys": loaded.lightning_keys,
                                    "why": "training state around the weights (optimizer, loops, callbacks)"}}
               if loaded.lightning_keys else {}),
        },
        "components": {name: len(sd) for name, sd in plan.state_dicts.items()},
        "image_size": plan.image_size,
        "notes": loaded.notes,
        "versions": {
            "anydoor": anydoor.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    pipeline = assemble_pipeline(plan)
    del plan, loaded

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        (staging / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
