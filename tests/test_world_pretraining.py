"""The embedded world's pretraining: renders, the CLIP and DINO/iBOT recipes, staged pretrain-world."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from anydoor.data.world_views import CALIBRATION_SEED, PRETRAIN_SEED, render_batch, world_objects
from anydoor.training import world_clip, world_dino
from anydoor.training.world_clip import ClipSettings, train_clip
from anydoor.training.world_dino import DinoSettings, dino_loss, ibot_loss, random_views, train_dino

TINY_VISION = dict(image_size=32, layers=1, width=32, head_width=16, patch_size=8)
TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                   use_swiglu_ffn=True, layerscale_value=1.0, layer_norm_eps=1e-6, image_size=32)
TINY_VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8,
                image_size=32)


@pytest.fixture(scope="module")
def bank():
    return world_objects(4, seed=PRETRAIN_SEED)


def test_splits_share_no_object():
    pretrain = world_objects(8, seed=PRETRAIN_SEED)
    calibration = world_objects(8, seed=CALIBRATION_SEED)
    again = world_objects(8, seed=PRETRAIN_SEED)
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(pretrain, again))  # deterministic
    assert not any(np.array_equal(a.rgb, b.rgb) for a in pretrain for b in calibration)


def test_render_batch_shapes_masks_and_white_backgrounds(bank):
    batch = render_batch(bank, 6, 48, np.random.default_rng(0), white_prob=1.0)
    assert batch.images.shape == (6, 48, 48, 3) and batch.images.dtype == np.uint8
    assert batch.masks.shape == (6, 48, 48) and batch.masks.any(axis=(1, 2)).all()
    assert (batch.images[~batch.masks] == 255).all()  # on white, everything outside the mask is white
    assert {a.background for a in batch.attributes} == {"white"}
    on_scenes = render_batch(bank, 6, 48, np.random.default_rng(0), white_prob=0.0)
    assert "white" not in {a.background for a in on_scenes.attributes}
    from anydoor.data.captions import TEMPLATES, object_attributes

    captions = batch.captions(np.random.default_rng(1))
    for k, text, attrs in zip(batch.objects, captions, batch.attributes):
        assert attrs == object_attributes(bank[k], "white")
        assert text in {t.format(**attrs.words()) for t in TEMPLATES}


def test_random_views_crop_turn_and_keep_hue():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 32, 32)
    images[:, 0] = 1.0  # a red square object on green
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1.0
    images = images * masks + torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1) * (1 - masks)
    views = random_views(images, masks, torch.ones(2, 3, 32, 32), 16, (0.5, 1.0), swap_prob=1.0, generator=g)
    assert views.shape == (2, 3, 16, 16) and views.min() >= 0 and views.max() <= 1
    # The background was swapped for white; the object stays red (lighting scales it, no hue change).
    assert not (views[:, 1] > 0.9).logical_and(views[:, 0] < 0.1).any()
    red = (views[:, 0] > 0.5) & (views[:, 1] < 0.2)
    assert red.any()
    again = random_views(images, masks, torch.ones(2, 3, 32, 32), 16, (0.5, 1.0), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(views, again)


def test_dino_loss_hand_computed():
    # Two global views, no local: each teacher view is matched with the other student view only.
    student = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))  # views 0 and 1, batch 1
    teacher = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    loss = dino_loss(student, teacher, torch.zeros(1, 2), student_temp=1.0, teacher_temp=1.0, views=2)
    t0, t1 = torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4])
    expected = 0.5 * (-(t0 * torch.log(torch.tensor([0.9, 0.1]))).sum() - (t1 * torch.log(torch.tensor([0.5, 0.5]))).sum())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_ibot_loss_averages_masked_patches_per_view_then_views():
    masks = torch.tensor([[True, True, False], [False, False, True]])
    student = torch.zeros(3, 2)  # uniform predictions: cross-entropy log 2 whatever the target
    teacher = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    loss = ibot_loss(student, teacher, masks, torch.zeros(1, 2), 1.0, 1.0)
    assert torch.allclose(loss, torch.log(torch.tensor(2.0)))
    assert ibot_loss(student[:0], teacher[:0], torch.zeros(2, 3, dtype=torch.bool), torch.zeros(1, 2), 1.0, 1.0) == 0


def _finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_clip_recipe_fits_a_repeated_batch(bank, tmp_path):
    from open_clip.tokenizer import HFTokenizer

    from anydoor.data.captions import CONTEXT_LENGTH, build_caption_tokenizer

    tokenizer = HFTokenizer(str(build_caption_tokenizer(tmp_path)), context_length=CONTEXT_LENGTH)
    batch = render_batch(bank, 4, 32, np.random.default_rng(0), white_prob=0.5)
    fixed = batch.captions(np.random.default_rng(0))
    batch.captions = lambda rng: fixed  # the same four renders and captions every step
    settings = ClipSettings(vision=TINY_VISION, embed_dim=32, text_width=32, text_heads=2, text_layers=2,
                            render_size=32, steps=30, batch_size=4, warmup_steps=3, learning_rate=3e-3, seed=0)
    run = train_clip(settings, bank, tokenizer, progress=False, batches=itertools.repeat(batch))
    chance = np.log(4)  # InfoNCE of a batch of 4 that matches nothing
    assert np.mean(run.losses[:3]) > chance and np.mean(run.losses[-5:]) < 0.7 * chance
    assert _finite(run.model)
    again = train_clip(settings, bank, tokenizer, progress=False, batches=itertools.repeat(batch))
    assert run.losses == again.losses  # seeded


@pytest.mark.parametrize("architecture, backbone, ibot", [("dinov2", TINY_DINOV2, True), ("vit", TINY_VIT, False)])
def test_dino_recipe_fits_a_repeated_batch(bank, architecture, backbone, ibot):
    settings = DinoSettings(architecture=architecture, backbone=backbone, ibot=ibot, global_size=32, local_size=16,
                            local_crops=2, steps=30, batch_size=4, warmup_steps=3, out_dim=64, head_hidden=32,
                            head_bottleneck=16, render_size=32, momentum=(0.9, 0.99), seed=0)
    renders = world_dino.render_tensors(bank, settings, np.random.default_rng(0))
    init = world_dino.build_backbone(settings, settings.seed)
    run = train_dino(settings, bank, progress=False, renders=itertools.repeat(renders))
    assert np.mean(run.losses[-5:]) < np.mean(run.losses[:3])
    assert run.teacher_moved > 0
    moved = [not torch.equal(a, b) for a, b in zip(init.parameters(), run.backbone.parameters())]
    assert any(moved) and _finite(run.backbone)
    again = train_dino(settings, bank, progress=False, renders=itertools.repeat(renders))
    assert run.losses == again.losses


def test_ibot_needs_the_dinov2_mask_token():
    with pytest.raises(ValueError, match="ibot=True needs architecture='dinov2'"):
        DinoSettings(architecture="vit", backbone=TINY_VIT, ibot=True)


# --------------------------------------------------------------------------- pretrain-world stages


def _small_settings():
    from anydoor.world import pretrain

    return {
        "clip": dataclasses.replace(pretrain.CLIP_SETTINGS, vision={**TINY_VISION, "image_size": 224, "patch_size": 56},
                                    steps=2, batch_size=4, warmup_steps=1),
        "dinov2": dataclasses.replace(pretrain.DINOV2_SETTINGS, backbone={**TINY_DINOV2, "image_size": 224, "patch_size": 28},
                                      global_size=56, local_size=28, local_crops=1, steps=2, highres_steps=1,
                                      batch_size=2, warmup_steps=1, out_dim=32, head_hidden=16, head_bottleneck=8),
        "metric_clip": dataclasses.replace(pretrain.METRIC_CLIP_SETTINGS, vision=TINY_VISION, embed_dim=32,
                                           text_width=32, text_heads=2, text_layers=1, steps=2, batch_size=4,
                                           warmup_steps=1),
        "metric_dino": dataclasses.replace(pretrain.METRIC_DINO_SETTINGS, backbone=TINY_VIT, global_size=32,
                                           local_size=16, local_crops=1, steps=2, batch_size=2, warmup_steps=1,
                                           out_dim=32, head_hidden=16, head_bottleneck=8),
        "vae": dataclasses.replace(pretrain.VAE_SETTINGS, steps=2, batch_size=2, eval_every=1),
        "base_unet": dataclasses.replace(pretrain.BASE_UNET_SETTINGS, steps=2, batch_size=2, eval_every=1),
        "anydoor_world": dataclasses.replace(pretrain.ANYDOOR_WORLD_SETTINGS, steps=2, batch_size=2, pair_pool=4,
                                             lr_warmup_steps=1, checkpoint_every=1,
                                             synthetic=dict(videos=2, frames=2, size=96, benchmark_pairs=1, seed=0)),
    }


@pytest.mark.slow
def test_pretrain_world_stages_are_redone_only_when_their_inputs_change(tmp_path):
    from anydoor import world
    from anydoor.world.pretrain import pretrain_world

    out, work = tmp_path / "world", tmp_path / "work"
    settings = _small_settings()
    logs: list[str] = []
    kwargs = dict(work=work, progress=False, settings=settings, objects=6, calibration_objects=6, log=logs.append)
    manifest = pretrain_world(out, **kwargs)
    assert set(manifest["stages"]) == set(world.STAGE_NAMES)
    for entry in manifest["files"]:
        assert world.sha256_file(out / entry["file"]) == entry["sha256"]
    calibration = manifest["calibration"]
    assert set(calibration["retrieval"]) == {"clip", "dinov2", "metric_clip", "metric_dino"}
    assert calibration["objects"] == 6

    logs.clear()
    pretrain_world(out, **kwargs)
    assert all("up to date" in line for line in logs) and len(logs) == len(world.STAGE_NAMES)

    # A changed setting redoes that stage and the calibration that reads it, nothing else.
    logs.clear()
    settings["metric_dino"] = dataclasses.replace(settings["metric_dino"], seed=99)
    again = pretrain_world(out, **kwargs)
    redone = [line.split()[1].rstrip(":") for line in logs if "training" in line]
    assert redone == ["metric_dino", "calibration"]
    assert again["stages"]["clip"] == manifest["stages"]["clip"]

    # AnyDoor-world is one pipeline folder around the vae and dinov2 stages' files, which it does not copy.
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    pipe = world.load_anydoor_world(out)
    assert isinstance(pipe, AnyDoorPipeline) and pipe.unet.dtype == torch.float32
    backbone = world.load_dinov2(out)
    for key, value in backbone.state_dict().items():
        assert torch.equal(pipe.id_extractor.backbone.state_dict()[key], value)
    assert manifest["stages"]["dinov2"]["files"] == [f for f in manifest["files"] if "id_extractor" in f["file"]]

    # The shipped-layout loaders read what the stages wrote, by name for open_clip.
    import open_clip

    model, tokenizer = world.load_clip(out)
    assert isinstance(model, open_clip.CLIP)
    assert open_clip.get_model_config(world.CLIP_MODEL_NAME)["text_cfg"]["width"] == settings["clip"].text_width
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a red blob"]))
    assert text.shape == (1, settings["clip"].embed_dim)

    # A corrupt file is named, with the command that rebuilds it; so is a missing one.
    victim = out / world.METRIC_DINO_DIR / "model.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(world.WorldModelError, match=r"model.safetensors.*does not match.*anydoor pretrain-world"):
        world.verified_folder(world.METRIC_DINO_DIR, out)
    victim.unlink()
    with pytest.raises(world.WorldModelError, match=r"model.safetensors.*is missing.*anydoor pretrain-world"):
        world.verified_folder(world.METRIC_DINO_DIR, out)
    # A rerun notices and rebuilds exactly that stage; training is deterministic, so the file comes
    # back with the same hash and the calibration that reads it stays up to date.
    logs.clear()
    rebuilt = pretrain_world(out, **kwargs)
    assert [line.split()[1].rstrip(":") for line in logs if "training" in line] == ["metric_dino"]
    assert rebuilt["stages"]["metric_dino"]["files"] == again["stages"]["metric_dino"]["files"]


def test_pretrain_world_refuses_unknown_stages(tmp_path):
    from anydoor.world.pretrain import pretrain_world

    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['vea'\]"):
        pretrain_world(tmp_path, only=["vea"])


def test_missing_manifest_is_a_clear_error(tmp_path):
    from anydoor import world

    with pytest.raises(world.WorldModelError, match="manifest.*is missing.*anydoor pretrain-world --out anydoor/world"):
        world.load_manifest(tmp_path)
    (tmp_path / world.MANIFEST).write_text("{not json")
    with pytest.raises(world.WorldModelError, match="not valid JSON"):
        world.load_manifest(tmp_path)
