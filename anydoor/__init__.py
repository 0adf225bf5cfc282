"""AnyDoor (Chen et al., CVPR 2024) on diffusers: zero-shot object-level image
customization, with the paper's ablations.

Importing the package does no work; heavy submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Exported at the top level because diffusers' pipeline loader finds custom
# components as `getattr(importlib.import_module("anydoor"), class_name)`.
_LAZY = {
    "AnyDoorPipeline": "anydoor.pipeline_anydoor",
    "AnyDoorPipelineOutput": "anydoor.pipeline_anydoor",
    "DINOv2IDExtractor": "anydoor.models.id_extractors",
    "CLIPIDExtractor": "anydoor.models.id_extractors",
}

if TYPE_CHECKING:  # pragma: no cover
    from anydoor.models.id_extractors import CLIPIDExtractor, DINOv2IDExtractor
    from anydoor.pipeline_anydoor import AnyDoorPipeline, AnyDoorPipelineOutput


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anydoor' has no attribute {name!r}")


__all__ = sorted(_LAZY)
