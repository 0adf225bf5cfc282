"""AnyDoor-world (issue 28): the shipped long-trained full method, the default pipeline of compose."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from anydoor import world


def _tensor_hashes(path) -> dict[str, str]:
    return {name: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in load_file(path).items() if t.numel() > 16}


def test_one_pipeline_folder_holding_the_shipped_vae_and_id_backbone_once():
    folder = world.anydoor_world_path()
    index = json.loads((folder / "model_index.json").read_text())
    assert {"vae", "unet", "controlnet", "id_extractor", "scheduler"} <= set(index)
    # The VAE and the DINOv2-like backbone every other loader reads are this folder's subfolders.
    assert world.vae_path() == folder / "vae" and world.dinov2_path() == folder / "id_extractor"
    manifest = world.load_manifest()
    shared = {
        "anydoor_world/vae/diffusion_pytorch_model.safetensors": None,
        "anydoor_world/id_extractor/diffusion_pytorch_model.safetensors": "backbone.",
    }
    for owner, prefix in shared.items():
        owned = {h for name, h in _tensor_hashes(world.world_dir() / owner).items()
                 if prefix is None or name.startswith(prefix)}
        for entry in manifest["files"]:
            if entry["file"] != owner and entry["file"].endswith(".safetensors"):
                others = set(_tensor_hashes(world.world_dir() / entry["file"]).values())
                assert not owned & others, f"{entry['file']} stores tensors of {owner} again"


def test_a_changed_file_of_the_pipeline_is_refused(tmp_path):
    root = tmp_path / "world"
    shutil.copytree(world.world_dir(), root, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    victim = root / "anydoor_world" / "unet" / "diffusion_pytorch_model.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(world.WorldModelError, match=r"unet.*does not match its manifest sha256"):
        world.anydoor_world_path(root)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from anydoor.data.datasets import BenchmarkSet
    from anydoor.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("aw")
    write_synthetic_dataset(root / "data", videos=2, frames=2, size=96, benchmark_pairs=1, seed=3)
    return BenchmarkSet(root / "data" / "benchmark")[0]


def test_compose_defaults_to_anydoor_world_and_keeps_the_scene_outside_the_crop(pair, tmp_path):
    from anydoor.cli import main
    from anydoor.presets import ANYDOOR_WORLD_GUIDANCE, anydoor_world

    obj = np.dstack([pair["object_image"], pair["object_mask"].astype(np.uint8) * 255])
    PIL.Image.fromarray(obj).save(tmp_path / "object.png")
    PIL.Image.fromarray(pair["scene_image"]).save(tmp_path / "scene.png")
    PIL.Image.fromarray(pair["scene_mask"].astype(np.uint8) * 255).save(tmp_path / "where.png")
    args = ["compose", "--object", str(tmp_path / "object.png"), "--scene", str(tmp_path / "scene.png"),
            "--scene-mask", str(tmp_path / "where.png"), "--steps", "4", "--out", str(tmp_path / "out.png")]
    assert main(args) == 0
    composite = np.asarray(PIL.Image.open(tmp_path / "out.png"))

    pipe = anydoor_world()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(pair["object_image"], pair["object_mask"], pair["scene_image"], scene_mask=pair["scene_mask"],
                    num_inference_steps=4, guidance_scale=ANYDOOR_WORLD_GUIDANCE,
                    generator=torch.Generator().manual_seed(0))
    # compose's default is AnyDoor-world, sampled at its guidance (1.0), not the released 5.0
    np.testing.assert_array_equal(composite, np.asarray(expected.images[0]))

    paste = pipe.prepare_inputs(pair["object_image"], pair["object_mask"], pair["scene_image"],
                                scene_mask=pair["scene_mask"]).paste
    x0, y0, x1, y1 = paste.crop_box
    m = paste.margin
    outside = np.ones(composite.shape[:2], bool)
    outside[y0 + m : y1 - m, x0 + m : x1 - m] = False
    np.testing.assert_array_equal(composite[outside], pair["scene_image"][outside])
    assert not np.array_equal(composite[~outside], pair["scene_image"][~outside])  # it did insert something
