"""The embedded world's shipped models (anydoor/world/): hashes, loaders, sizes, calibration bars."""

from __future__ import annotations

import json

import pytest
import torch

from anydoor import world


@pytest.fixture(scope="module")
def manifest():
    return world.load_manifest()


def test_every_shipped_file_matches_its_manifest_hash(manifest):
    assert set(manifest["stages"]) == set(world.STAGE_NAMES)
    listed = {entry["file"] for entry in manifest["files"]}
    on_disk = {p.relative_to(world.world_dir()).as_posix() for p in world.world_dir().rglob("*")
               if p.is_file() and p.suffix in (".json", ".safetensors") and p.name != world.MANIFEST}
    assert listed == on_disk  # nothing shipped without a hash, nothing listed that is not shipped
    for entry in manifest["files"]:
        assert world.sha256_file(world.world_dir() / entry["file"]) == entry["sha256"], entry["file"]
    for key in ("command", "pretrain_seed", "calibration_seed", "calibration"):
        assert key in manifest
    for name, record in manifest["stages"].items():
        assert record["seconds"] > 0 and record["commit"], name


def test_shipped_models_are_small(manifest):
    sizes = {e["file"]: (world.world_dir() / e["file"]).stat().st_size for e in manifest["files"]}
    assert max(sizes.values()) <= 8 * 2**20
    assert sum(sizes.values()) <= 25 * 2**20


def test_shipped_models_are_those_the_code_makes(manifest):
    """Each stage's recorded inputs (its modules' source, settings, seeds, the stages it reads) are
    today's: a change to the code or data behind a model needs `anydoor pretrain-world --out anydoor/world`."""
    from anydoor.world.pretrain import STAGES, Context, _hash_json, stage_inputs, stage_settings

    ctx = Context(out=world.world_dir(), work=world.world_dir(), settings=stage_settings())
    stale = [s.name for s in STAGES if _hash_json(stage_inputs(s, manifest, ctx)) != manifest["stages"][s.name]["inputs"]]
    assert not stale, f"world models out of date with the code: {stale}; run `{world.REBUILD_COMMAND}`"


def test_the_clip_model_loads_by_name_with_its_tokenizer():
    import open_clip

    model, tokenizer = world.load_clip()
    assert open_clip.get_model_config(world.CLIP_MODEL_NAME) is not None
    again = open_clip.create_model(world.CLIP_MODEL_NAME, pretrained=str(world.verified_folder(world.CLIP_DIR) / world.CLIP_WEIGHTS))
    tokens = tokenizer(["a green striped ellipse with a red marker on a noisy background"])
    with torch.no_grad():
        a, b = model.encode_text(tokens), again.eval().encode_text(tokens)
    torch.testing.assert_close(a, b)
    from anydoor.presets import TINY_CROSS_ATTENTION_DIM

    assert model.transformer.width == TINY_CROSS_ATTENTION_DIM  # the UNet's cross-attention width


def test_the_dinov2_backbone_loads_with_from_pretrained():
    from transformers import Dinov2Model

    backbone = world.load_dinov2()
    assert isinstance(backbone, Dinov2Model) and backbone.config.image_size == 224 and backbone.config.patch_size == 14
    from anydoor.models.id_extractors import DINOv2IDExtractor

    direct = DINOv2IDExtractor.from_pretrained(world.dinov2_path()).backbone  # AnyDoor-world's id_extractor/
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone(pixel_values=x).last_hidden_state, direct.eval()(pixel_values=x).last_hidden_state)


def test_tiny_preset_id_extractors_wrap_the_world_backbones():
    from anydoor.presets import TINY_CROSS_ATTENTION_DIM, tiny_id_extractor

    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    backbone = world.load_dinov2()
    for name, tokens in (("dinov2", 257), ("dinov2-global", 1), ("clip", 257)):
        extractor = tiny_id_extractor(name, "world", seed=3)
        out = extractor(images)
        assert out.shape == (2, tokens, TINY_CROSS_ATTENTION_DIM) and torch.isfinite(out).all()
        assert not any(p.requires_grad for p in extractor.backbone.parameters())  # frozen, as released
        if name == "dinov2":
            # The same weights as the shipped backbone: the grids agree, so no re-gridding.
            for key, value in backbone.state_dict().items():
                torch.testing.assert_close(extractor.backbone.state_dict()[key], value)
    random = tiny_id_extractor("dinov2", "random", seed=3)
    assert not torch.equal(random.backbone.embeddings.cls_token, backbone.embeddings.cls_token)
    with pytest.raises(ValueError, match="id_backbone must be one of"):
        tiny_id_extractor("dinov2", "imagenet", seed=0)


def test_world_metric_backbones_are_in_world(manifest):
    from eval.backbones import load_backbones

    backbones = load_backbones(metric_backbones="world")
    assert backbones.source == "in-world"
    assert backbones.clip.image_size == backbones.dino.image_size == 64
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for embedder in (backbones.clip, backbones.dino):
        e = embedder(x)
        assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


def test_calibration_bars(manifest):
    """The issue's bars, read from the shipped calibration: every trained backbone above its
    random-init floor on top-1 (paired CI excludes 0); in-world DINO-I and CLIP-I of the true
    target above another object's target."""
    from eval.calibration import calibration_bars

    calibration = manifest["calibration"]
    assert calibration["objects"] == 256
    failed = [(what, evidence) for what, met, evidence in calibration_bars(calibration) if not met]
    assert not failed, json.dumps(failed)
