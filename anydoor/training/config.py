"""Training configuration: typed dataclasses loaded from YAML with dotted overrides.

The shipped configs (`configs/train_tiny.yaml`, `configs/train_sd21_dinov2.yaml`)
comment every field; the comments next to the fields below are the reference.
`load_config(path, ["max_steps=20", "model.preset=tiny", "data.0.weight=2"])`
reads a file, applies overrides (values parsed as YAML), and checks every key
and type: an unknown key or a value of the wrong type is a `ValueError` naming
the key. Relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

LOADERS = ("video", "image_mask")
PRESETS = ("tiny", "base")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class DataSourceConfig:
    path: str  # folder: YouTube-VOS layout (loader video) or images/ + masks/ (loader image_mask)
    loader: str = "video"  # "video": pairs of frames of one object; "image_mask": reference = target
    kind: str = "video"  # ATS kind: "video" | "image" | "multiview" (DESIGN.md "Data sources")
    weight: float = 1.0  # relative sampling weight in the mixture
    masks: str = "ids"  # image_mask: "ids" (object-id maps, <stem>.png) | "binary" (one object per file, PNG/JPEG, any mode)


WORLD_MODEL = "world"  # model.vae / model.base_unet: the embedded world's shipped model (`anydoor.world`)
# The tiny preset's default trainable set: the released one (UNet decoder + detail extractor + projector; the
# base's encoder frozen, as the released recipe freezes SD2.1's), now that the base is pretrained. Measured
# against the whole UNet (sweeps/world_base.yaml, 2026-12-07): no difference on any metric (CLIP-I (in-world)
# +1.5 [-1.6, +5.0], DINO-I +0.1 [-0.9, +1.0], PSNR in mask -0.08 [-0.24, +0.09] dB), 5 % more samples/s.
TINY_TRAINABLE = "released"


@dataclass
class ModelConfig:
    preset: str = "tiny"  # "tiny": the embedded default (random init); "base": SD2.1-base + ID backbone
    stable_diffusion: str = "stabilityai/stable-diffusion-2-1-base"  # base: Hub id or folder (epsilon prediction)
    # base: DINOv2 id/folder, or the open_clip model name for "clip" (None: facebook/dinov2-giant);
    # tiny: "world" (the shipped in-world backbone, frozen), "random", or a DINOv2-like backbone folder (None: world)
    id_backbone: str | None = None
    clip_pretrained: str | None = None  # base + "clip": open_clip weights file or tag
    local_files_only: bool | None = None  # base: None = only local/cache when HF_HUB_OFFLINE is set
    id_extractor: str = "dinov2"  # "dinov2" | "dinov2-global" | "clip" (paper Table 4)
    detail_map: str = "hf"  # what the collage shows: "hf" | "rgb" | "noise" | "shuffle" | "none" (Table 5)
    remove_background: bool = True  # white out the reference background (Table 4's last row)
    # tiny: "world" (the shipped world VAE, `anydoor.world`), a folder of one (`anydoor train-vae`), None = untrained
    vae: str | None = WORLD_MODEL
    # tiny: "world" (the shipped caption-conditioned base UNet, SD2.1's stand-in), a folder of a UNet
    # (`anydoor train-base`), None = random init
    base_unet: str | None = WORLD_MODEL
    # "released" (detail extractor + UNet decoder + projector) | "full_unet" (+ the whole UNet);
    # None = "released" for the base preset, TINY_TRAINABLE ("released" too) for the tiny one
    trainable: str | None = None


@dataclass
class TrainConfig:
    data: list[DataSourceConfig] = field(default_factory=list)  # training sources (at least one)
    model: ModelConfig = field(default_factory=ModelConfig)
    image_size: int | None = None  # S, the target crop side; None = the model's (64 tiny, 512 base)
    samples_per_epoch: int | None = None  # mixture length per epoch; None = sum of the sources' lengths
    max_steps: int = 300000  # optimiser steps
    batch_size: int = 16  # samples per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step
    learning_rate: float = 1e-5  # AdamW lr (released: 1e-5)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.01  # torch AdamW's default, as released
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None  # gradient clipping; None = off (released)
    lr_scheduler: str = "constant"  # "constant" | "constant_with_warmup" | "linear" | "cosine"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (Accelerate autocast; frozen parts cast)
    gradient_checkpointing: bool = False  # recompute UNet / detail-extractor activations
    ema: bool = False  # keep an EMA of the trainable weights; checkpoints then hold the EMA weights
    ema_decay: float = 0.9999
    timestep_sampler: str = "ats"  # "ats" (AnyDoor) | "uniform" (baseline)
    # Prepared pairs reused across epochs (frozen VAE encode, pair preparation and ID backbone done once,
    # `anydoor.training.pair_pool`); None = prepare every pair afresh (the released loaders' behaviour)
    pair_pool: int | None = None
    pair_pool_dir: str | None = None  # where pools are kept, keyed by their inputs; None = output_dir/pair_pool
    cond_dropout: float = 0.0  # P(ID tokens -> unconditional tokens) per sample; released: 0
    seed: int = 0  # model init, data order, timesteps, noise, dropout
    output_dir: str = "runs/train"  # checkpoints/, pipeline/, metrics.jsonl, config.yaml
    checkpoint_every: int = 5000  # steps between checkpoints (and one at the end)
    keep_checkpoints: int | None = None  # keep only the newest N checkpoints; None = all
    num_workers: int = 0  # DataLoader worker processes per process
    log_every: int = 10  # steps between metrics.jsonl lines
    wandb_project: str | None = "anydoor"  # None = no W&B
    wandb_mode: str | None = None  # "online" | "offline" | "disabled"; None = $WANDB_MODE, else offline
    wandb_run_name: str | None = None
    sample_every: int = 0  # steps between sample grids (W&B and output_dir/samples); 0 = never
    sample_count: int = 4  # pairs in a sample grid
    sample_steps: int = 20  # DDIM steps for the sample grid
    sample_guidance: float = 5.0  # guidance scale for the sample grid


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ValueError(f"config key {key!r} must not be empty (null)")
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(value, inner, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} must be a list, got {type(value).__name__} {value!r}")
        return [_convert(item, item_tp, f"{key}.{i}") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-5" (no dot) as a string.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, PathLike)):
            return str(value)
        if isinstance(value, bool):
            # YAML 1.1 reads bare no/yes/off/on as booleans.
            raise ValueError(f"config key {key!r} must be str, got bool {value!r}; quote the value (e.g. \"no\")")
    raise ValueError(f"config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _from_dict(cls: type, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ValueError(f"unknown config key {prefix + str(key)!r}{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _convert(values[f.name], hints[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"config key {prefix + f.name!r} is required")
    return cls(**kwargs)


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"config key {key!r} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_min(key: str, value, minimum) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"config key {key!r} must be >= {minimum}, got {value!r}")


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check values (choices, ranges) that the types alone do not; return the
    config with preset-dependent defaults (``model.trainable``) filled in."""
    # Imported here: these modules import torch/diffusers, and reading a
    # config should not require loading them.
    from anydoor.data.detail_maps import DETAIL_MAP_NAMES
    from anydoor.data.pairs import KINDS
    from anydoor.models.denoiser import TRAINABLE_RECIPES
    from anydoor.models.id_extractors import ID_EXTRACTOR_NAMES
    from anydoor.training.timesteps import TIMESTEP_SCHEMES

    if not config.data:
        raise ValueError("config key 'data' lists no data sources: give at least one {path, loader, kind, weight}")
    for i, source in enumerate(config.data):
        if not source.path:
            raise ValueError(f"config key 'data.{i}.path' is empty")
        _check_choice(f"data.{i}.loader", source.loader, LOADERS)
        _check_choice(f"data.{i}.kind", source.kind, KINDS)
        _check_choice(f"data.{i}.masks", source.masks, ("ids", "binary"))
        if not source.weight > 0:
            raise ValueError(f"config key 'data.{i}.weight' must be > 0, got {source.weight!r}")
    model = config.model
    _check_choice("model.preset", model.preset, PRESETS)
    _check_choice("model.id_extractor", model.id_extractor, ID_EXTRACTOR_NAMES)
    _check_choice("model.detail_map", model.detail_map, DETAIL_MAP_NAMES)
    if model.id_backbone is None:
        default = "facebook/dinov2-giant" if model.preset == "base" else "world"
        model = dataclasses.replace(model, id_backbone=default)
        config = dataclasses.replace(config, model=model)
    if model.preset == "tiny":
        from anydoor.presets import check_tiny_id_backbone

        try:
            check_tiny_id_backbone(model.id_backbone, model.id_extractor)
        except ValueError as err:
            raise ValueError(f"config key 'model.id_backbone': {err}") from None
    if model.trainable is None:
        model = dataclasses.replace(model, trainable="released" if model.preset == "base" else TINY_TRAINABLE)
        config = dataclasses.replace(config, model=model)
    _check_choice("model.trainable", model.trainable, TRAINABLE_RECIPES)
    if model.preset == "base" and model.vae not in (None, WORLD_MODEL):
        raise ValueError("config key 'model.vae' applies to the tiny preset only; the base preset uses SD2.1's VAE")
    _check_choice("lr_scheduler", config.lr_scheduler, LR_SCHEDULERS)
    _check_choice("mixed_precision", config.mixed_precision, MIXED_PRECISION)
    _check_choice("timestep_sampler", config.timestep_sampler, TIMESTEP_SCHEMES)
    if config.wandb_mode is not None:
        _check_choice("wandb_mode", config.wandb_mode, WANDB_MODES)
    for key in ("batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every",
                "samples_per_epoch", "keep_checkpoints", "sample_count", "sample_steps", "image_size", "pair_pool"):
        _check_min(key, getattr(config, key), 1)
    # max_steps 0 saves the untrained model (the reports' "untrained" reference row).
    for key in ("max_steps", "lr_warmup_steps", "num_workers", "sample_every", "seed"):
        _check_min(key, getattr(config, key), 0)
    if not config.learning_rate > 0:
        raise ValueError(f"config key 'learning_rate' must be > 0, got {config.learning_rate!r}")
    if config.max_grad_norm is not None and not config.max_grad_norm > 0:
        raise ValueError(f"config key 'max_grad_norm' must be > 0 or null, got {config.max_grad_norm!r}")
    if not 0.0 <= config.cond_dropout <= 1.0:
        raise ValueError(f"config key 'cond_dropout' must lie in [0, 1], got {config.cond_dropout!r}")
    if not 0.0 < config.ema_decay < 1.0:
        raise ValueError(f"config key 'ema_decay' must lie in (0, 1), got {config.ema_decay!r}")
    if not config.output_dir:
        raise ValueError("config key 'output_dir' is empty")
    return config


def config_from_dict(values: dict) -> TrainConfig:
    """A checked `TrainConfig` from a plain dict (the YAML file's content)."""
    if not isinstance(values, dict):
        raise ValueError(f"a training config must be a mapping of keys to values, got {type(values).__name__}")
    return validate_config(_from_dict(TrainConfig, values))


def config_to_dict(config: TrainConfig) -> dict:
    """Plain dict of the config (for YAML, W&B and checkpoints)."""
    return dataclasses.asdict(config)


def apply_override(values: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config dict in place.

    The value is parsed as YAML (``20`` -> int, ``true`` -> bool, ``null`` ->
    None, ``[a, b]`` -> list); list items are addressed by index
    (``data.0.path=...``).
    """
    if not isinstance(override, str) or "=" not in override:
        raise ValueError(f"override {override!r} must look like key=value (e.g. max_steps=20)")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {override!r} has an empty key part")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"override {override!r}: the value is not valid YAML ({err})") from None
    node: Any = values
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"override {override!r}: {where!r} is not an index of a list of {len(node)} items")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise ValueError(f"override {override!r}: {'.'.join(parts[:depth])!r} is not a mapping or a list")
        if last:
            node[index] = value
        else:
            node = node[index]


def load_config(path: str | PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML training config (None: the defaults) and apply ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(loaded).__name__}")
        values = loaded or {}
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    for override in overrides:
        apply_override(values, override)
    return config_from_dict(values)


def save_config(config: TrainConfig, path: str | PathLike) -> Path:
    """Write the config as YAML (`load_config` reads it back unchanged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
