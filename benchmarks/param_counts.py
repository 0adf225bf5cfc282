"""Parameter counts of AnyDoor's networks, embedded default and full size.

Full-size models are built on the meta device (no memory, no weights) from
`anydoor.presets.full_size_configs`; the counts are compared with the
released checkpoint's (DESIGN.md 1c). Run: python benchmarks/param_counts.py
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from anydoor.models.denoiser import TRAINABLE_RECIPES, trainable_parameters
from anydoor.presets import (
    DINOV2_GIANT_IMAGE_SIZE,
    full_size_components,
    full_size_configs,
    tiny_components,
)

# Released checkpoint's parameter counts (DESIGN.md 1c: 865.9M, 364.2M,
# 83.7M, 1,136.5M, 1.6M), exact from released_checkpoint_manifest.json.
RELEASED = {
    "unet": 865_910_724,
    "controlnet": 364_228_384,
    "vae": 83_653_863,
    "dinov2@518": 1_136_480_768,
    "projector": 1_573_888,
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def counts(components: dict, dinov2_518: nn.Module | None = None) -> dict[str, int]:
    extractor = components["id_extractor"]
    rows = {
        "unet": count(components["unet"]),
        "controlnet": count(components["controlnet"]),
        "vae": count(components["vae"]),
        "id_backbone@224": count(extractor.backbone),
        "projector": count(extractor.projector),
    }
    if dinov2_518 is not None:
        rows["dinov2@518"] = count(dinov2_518)
    rows["unet+controlnet"] = rows["unet"] + rows["controlnet"]
    for recipe in TRAINABLE_RECIPES:
        chosen = trainable_parameters(components["unet"], components["controlnet"], extractor, recipe)
        rows[f"trainable[{recipe}]"] = sum(p.numel() for p in chosen.values())
    return rows


def main() -> None:
    print("embedded default (tiny, DINOv2-like ID extractor)")
    for name, n in counts(tiny_components(seed=0)).items():
        print(f"  {name:24s} {n:>15,d}")

    with torch.device("meta"):
        dinov2_518 = Dinov2Model(Dinov2Config(**full_size_configs()["dinov2"], image_size=DINOV2_GIANT_IMAGE_SIZE))
    print("full size (meta device)               count         released  diff")
    for name, n in counts(full_size_components(), dinov2_518).items():
        ref = RELEASED.get(name)
        cmp = f"{ref:>15,d}  {n - ref:+,d}" if ref is not None else ""
        print(f"  {name:24s} {n:>15,d}  {cmp}")


if __name__ == "__main__":
    main()
