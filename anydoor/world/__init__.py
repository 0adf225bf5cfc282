"""The embedded world's pretrained models, shipped with the package.

Every pretrained model of the real recipe has an in-world counterpart
(DESIGN.md section 4), trained once by `anydoor pretrain-world` on the
synthetic world and committed here as small safetensors, so an installed
`anydoor` has them as a real user has downloaded weights:

| file(s) | model | loaded by |
|---|---|---|
| ``clip/`` | the CLIP-like model (open_clip `CLIP`, registered as ``anydoor-world-clip``): its vision tower is the `clip` arm's ID backbone, its text tower conditions the world's base UNet | `load_clip` |
| ``anydoor_world/id_extractor/`` | the DINOv2-like ID backbone (transformers `Dinov2Model`), stored as AnyDoor-world's `DINOv2IDExtractor` (backbone + its trained projector) | `load_dinov2` (the backbone) |
| ``metric_clip/`` | the CLIP-I metric model's image tower (open_clip `VisionTransformer`) | `eval.backbones.load_world_backbones` |
| ``metric_dino/`` | the DINO-I metric backbone (transformers `ViTModel`) | same |
| ``anydoor_world/vae/`` | the tiny VAE (diffusers `AutoencoderKL`, x4, 4 latent channels): SD2.1's VAE's stand-in | `load_vae` |
| ``base_unet/`` | the caption-conditioned tiny UNet (diffusers `UNet2DConditionModel`) reading the CLIP text tower's tokens: SD2.1's UNet's stand-in, every AnyDoor arm starts from it | `load_base_unet` |
| ``anydoor_world/`` | AnyDoor-world: the full method trained long from the base (`AnyDoorPipeline` folder); its ``vae/`` and ``id_extractor/`` are the two rows above, stored once | `load_anydoor_world`, `anydoor_world_path` |

``manifest.json`` lists every file with its sha256, the command and commit
that produced them, the seeds, each stage's training time and the
calibration table (`eval.calibration`). Every loader checks the hashes of the
files it reads first: a missing or changed file is a `WorldModelError`
naming it and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from os import PathLike
from pathlib import Path

MANIFEST = "manifest.json"
CLIP_MODEL_NAME = "anydoor-world-clip"  # the open_clip model name the shipped config registers
OPEN_CLIP_CONFIG_DIR = "open_clip"  # open_clip model configs (<name>.json), for open_clip.add_model_config
# AnyDoor-world's pipeline folder; the world VAE and the DINOv2-like backbone live in it (one copy of each tensor).
ANYDOOR_WORLD_DIR = "anydoor_world"
CLIP_DIR, METRIC_CLIP_DIR, METRIC_DINO_DIR = "clip", "metric_clip", "metric_dino"
DINOV2_DIR = f"{ANYDOOR_WORLD_DIR}/id_extractor"  # a DINOv2IDExtractor folder: the backbone + a projector
VAE_DIR, BASE_UNET_DIR = f"{ANYDOOR_WORLD_DIR}/vae", "base_unet"  # diffusers `save_pretrained` folders (fp16)
CLIP_WEIGHTS = "open_clip_model.safetensors"
REBUILD_COMMAND = "anydoor pretrain-world --out anydoor/world"
# The stages of `anydoor pretrain-world` (anydoor.world.pretrain.STAGES), in order.
STAGE_NAMES = ("clip", "dinov2", "metric_clip", "metric_dino", "calibration", "vae", "base_unet", "anydoor_world")


class WorldModelError(FileNotFoundError):
    """A shipped world model file is missing or does not match its manifest hash."""


def world_dir() -> Path:
    """The folder the world models ship in (inside the installed package)."""
    return Path(__file__).resolve().parent


def sha256_file(path: str | PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(root: str | PathLike | None = None) -> dict:
    """The world manifest (`MANIFEST` in `root`, default `world_dir()`)."""
    path = Path(root or world_dir()) / MANIFEST
    if not path.is_file():
        raise WorldModelError(f"the world models' manifest {str(path)!r} is missing; rebuild with `{REBUILD_COMMAND}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WorldModelError(f"the world manifest {str(path)!r} is not valid JSON ({err}); rebuild with `{REBUILD_COMMAND}`") from None


def manifest_sha256(root: str | PathLike | None = None) -> str:
    """sha256 of the manifest file: names the whole set of world models (a run parameter)."""
    path = Path(root or world_dir()) / MANIFEST
    if not path.is_file():
        raise WorldModelError(f"the world models' manifest {str(path)!r} is missing; rebuild with `{REBUILD_COMMAND}`")
    return sha256_file(path)


@cache
def _verified(root: str, folder: str, manifest_hash: str) -> Path:
    """Check every manifest file under `folder`; cached per manifest version."""
    manifest = load_manifest(root)
    base = Path(root)
    parts = Path(folder).parts
    entries = [e for e in manifest.get("files", []) if Path(e["file"]).parts[: len(parts)] == parts]
    if not entries:
        raise WorldModelError(
            f"the world manifest in {root!r} lists no file under {folder!r}; rebuild with `{REBUILD_COMMAND}`"
        )
    for entry in entries:
        path = base / entry["file"]
        if not path.is_file():
            raise WorldModelError(f"world model file {str(path)!r} is missing; rebuild with `{REBUILD_COMMAND}`")
        if sha256_file(path) != entry["sha256"]:
            raise WorldModelError(
                f"world model file {str(path)!r} does not match its manifest sha256 (corrupt or changed); "
                f"rebuild with `{REBUILD_COMMAND}`"
            )
    return base / folder


def verified_folder(folder: str, root: str | PathLike | None = None) -> Path:
    """`root/folder` after checking each of its files against the manifest (`WorldModelError` if not)."""
    root = str(Path(root or world_dir()).resolve())
    return _verified(root, folder, manifest_sha256(root))


def register_open_clip(root: str | PathLike | None = None) -> str:
    """Register the shipped open_clip model config, so ``open_clip.create_model(CLIP_MODEL_NAME)``
    builds the world CLIP like any named model. Returns the name."""
    import open_clip

    path = Path(root or world_dir()) / OPEN_CLIP_CONFIG_DIR / f"{CLIP_MODEL_NAME}.json"
    if not path.is_file():
        raise WorldModelError(f"open_clip config {str(path)!r} is missing; rebuild with `{REBUILD_COMMAND}`")
    # open_clip's registry is per process and the last registered file of a name wins: register this
    # root's config unless the name already holds exactly it (another root may have registered first).
    if open_clip.get_model_config(CLIP_MODEL_NAME) != json.loads(path.read_text()):
        open_clip.add_model_config(path)
    return CLIP_MODEL_NAME


def clip_tokenizer(root: str | PathLike | None = None):
    """The world CLIP's word-level caption tokenizer (open_clip `HFTokenizer`)."""
    from open_clip.tokenizer import HFTokenizer

    from anydoor.data.captions import CONTEXT_LENGTH

    return HFTokenizer(str(verified_folder(CLIP_DIR, root)), context_length=CONTEXT_LENGTH)


def load_clip(root: str | PathLike | None = None):
    """The world CLIP (open_clip `CLIP`, eval mode) and its tokenizer."""
    import open_clip

    folder = verified_folder(CLIP_DIR, root)
    name = register_open_clip(root)
    model = open_clip.create_model(name, pretrained=str(folder / CLIP_WEIGHTS))
    return model.eval(), clip_tokenizer(root)


def dinov2_path(root: str | PathLike | None = None) -> Path:
    """The folder holding the DINOv2-like ID backbone (hash-checked): AnyDoor-world's ``id_extractor/``,
    a `DINOv2IDExtractor` `save_pretrained` folder whose ``backbone`` is the shipped backbone."""
    return verified_folder(DINOV2_DIR, root)


def load_dinov2(root: str | PathLike | None = None):
    """The DINOv2-like ID backbone (transformers `Dinov2Model`, float32, eval mode)."""
    import torch

    from anydoor.models.id_extractors import DINOv2IDExtractor

    # Building the module draws init values from torch's global RNG before the weights replace them:
    # fork it, so loading leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        return DINOv2IDExtractor.from_pretrained(dinov2_path(root), torch_dtype=torch.float32).backbone.eval()


def anydoor_world_path(root: str | PathLike | None = None) -> Path:
    """AnyDoor-world's `AnyDoorPipeline` folder (every file hash-checked)."""
    return verified_folder(ANYDOOR_WORLD_DIR, root)


def load_anydoor_world(root: str | PathLike | None = None):
    """AnyDoor-world (`AnyDoorPipeline`, float32): the embedded default's counterpart of the released checkpoint."""
    import torch

    from anydoor.pipeline_anydoor import AnyDoorPipeline

    with torch.random.fork_rng(devices=[]):  # as load_dinov2: no draw from the caller's global RNG
        return AnyDoorPipeline.from_pretrained(anydoor_world_path(root), torch_dtype=torch.float32)


def vae_path(root: str | PathLike | None = None) -> Path:
    """The world VAE's `save_pretrained` folder (hash-checked): SD2.1's VAE's stand-in."""
    return verified_folder(VAE_DIR, root)


def base_unet_path(root: str | PathLike | None = None) -> Path:
    """The caption-conditioned base UNet's `save_pretrained` folder (hash-checked): SD2.1's UNet's stand-in."""
    return verified_folder(BASE_UNET_DIR, root)


def load_vae(root: str | PathLike | None = None):
    """The world VAE (diffusers `AutoencoderKL`, float32, eval mode)."""
    import torch
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_path(root), torch_dtype=torch.float32).eval()


def load_base_unet(root: str | PathLike | None = None):
    """The caption-conditioned base UNet (diffusers `UNet2DConditionModel`, float32, eval mode)."""
    import torch
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(base_unet_path(root), torch_dtype=torch.float32).eval()
