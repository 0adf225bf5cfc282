"""Training: configs, adaptive timestep sampling, the loop, the embedded VAE.

`train(config)` runs AnyDoor's released recipe (DESIGN.md "Training recipe")
on Accelerate; `sample_timesteps` holds the uniform and adaptive timestep
samplers; `train_vae` / `ensure_tiny_vae` make the embedded default's VAE.
Submodules load on first use, so reading a config does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "TrainConfig": "anydoor.training.config",
    "DataSourceConfig": "anydoor.training.config",
    "ModelConfig": "anydoor.training.config",
    "load_config": "anydoor.training.config",
    "sample_timesteps": "anydoor.training.timesteps",
    "TIMESTEP_SCHEMES": "anydoor.training.timesteps",
    "train": "anydoor.training.loop",
    "TrainResult": "anydoor.training.loop",
    "diffusion_loss": "anydoor.training.loop",
    "train_vae": "anydoor.training.vae",
    "ensure_tiny_vae": "anydoor.training.vae",
}

if TYPE_CHECKING:  # pragma: no cover
    from anydoor.training.config import DataSourceConfig, ModelConfig, TrainConfig, load_config
    from anydoor.training.loop import TrainResult, diffusion_loss, train
    from anydoor.training.timesteps import TIMESTEP_SCHEMES, sample_timesteps
    from anydoor.training.vae import ensure_tiny_vae, train_vae


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anydoor.training' has no attribute {name!r}")


__all__ = sorted(_LAZY)
