"""The embedded world's Stable Diffusion: scene crops, the caption-conditioned base UNet, the VAE stage,
the shipped models and `anydoor world-sample` (issue 26)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from anydoor.data.captions import CONTEXT_LENGTH, caption_vocabulary
from anydoor.data.world_scenes import background_caption, scene_crops
from anydoor.data.world_views import world_objects


@pytest.fixture(scope="module")
def bank():
    return world_objects(6, seed=123)


@pytest.fixture(scope="module")
def encoder():
    from anydoor.models.caption_encoder import world_caption_encoder

    return world_caption_encoder()


def _words(text):
    import re

    return set(re.findall(r"\w+|[^\w\s]+", text.lower()))


def test_scene_crops_shapes_masks_and_captions(bank):
    crops = scene_crops(bank, 24, 64, np.random.default_rng(0), empty_prob=0.3)
    assert crops.images.shape == (24, 64, 64, 3) and crops.images.dtype == np.uint8
    assert crops.masks.shape == (24, 64, 64) and crops.masks.dtype == bool
    empty = [a is None for a in crops.attributes]
    assert 0 < sum(empty) < 24
    for mask, caption, attributes in zip(crops.masks, crops.captions, crops.attributes):
        assert _words(caption) <= set(caption_vocabulary())
        if attributes is None:
            assert not mask.any() and caption.endswith("background") and caption.startswith("a ")
        else:
            # The object fills a share of its crop like a pipeline target crop (box x 1.1-3.0, squared).
            assert 0.03 < mask.mean() < 0.9
    again = scene_crops(bank, 24, 64, np.random.default_rng(0), empty_prob=0.3)
    assert np.array_equal(again.images, crops.images) and again.captions == crops.captions
    images, masks = crops.tensors()
    assert images.shape == (24, 3, 64, 64) and -1.0 <= images.min() and images.max() <= 1.0
    assert masks.shape == (24, 1, 64, 64)
    assert background_caption("noise") == "a noisy background"
    with pytest.raises(ValueError, match="empty_prob must be in"):
        scene_crops(bank, 2, 64, np.random.default_rng(0), empty_prob=1.5)


def test_caption_states_reach_the_cross_attention(encoder):
    from diffusers import UNet2DConditionModel

    from anydoor.presets import TINY_CROSS_ATTENTION_DIM, tiny_unet_config

    captions = ["a red striped ellipse with a blue marker on a noisy background", "a green blob", ""]
    states = encoder(captions)
    assert states.shape == (3, CONTEXT_LENGTH, TINY_CROSS_ATTENTION_DIM) == (3, CONTEXT_LENGTH, encoder.width)
    assert torch.allclose(encoder.unconditional(2), states[2:].expand(2, -1, -1), atol=1e-5)
    assert not torch.allclose(states[0], states[1])
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config()).eval()
    seen = []
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = unet(latents, torch.tensor([500] * 3), encoder_hidden_states=states).sample
    assert seen and all(shape == (3, CONTEXT_LENGTH, TINY_CROSS_ATTENTION_DIM) for shape in seen)
    # Same latents, different captions: different predictions (the conditioning path is live).
    assert (out[0] - out[1]).abs().mean() > 1e-4 and (out[0] - out[2]).abs().mean() > 1e-4
    with pytest.raises(TypeError, match="list of strings"):
        encoder("a red blob")


def test_caption_dropout_gives_the_empty_caption():
    from anydoor.training.world_base import drop_captions

    captions = [f"a {c} blob" for c in ("red", "green", "blue", "pink")] * 50
    assert drop_captions(captions, 0.0, np.random.default_rng(0)) == captions
    assert drop_captions(captions, 1.0, np.random.default_rng(0)) == [""] * len(captions)
    half = drop_captions(captions, 0.5, np.random.default_rng(1))
    assert half == drop_captions(captions, 0.5, np.random.default_rng(1))
    kept = [d == c for d, c in zip(half, captions)]
    assert all(d == "" for d, k in zip(half, kept) if not k)
    assert 0.35 < np.mean(kept) < 0.65


def _fixed_batch(bank, count):
    crops = scene_crops(bank, count, 64, np.random.default_rng(5), empty_prob=0.25)
    return lambda *args, **kwargs: crops


def test_vae_stage_fits_a_repeated_batch(bank, monkeypatch):
    from anydoor.training import world_vae

    monkeypatch.setattr(world_vae, "scene_crops", _fixed_batch(bank, 4))
    fixed = world_vae.scene_crops().tensors()
    settings = world_vae.WorldVAESettings(steps=40, batch_size=4, patch_size=64, eval_every=40, learning_rate=3e-3)
    run = world_vae.train_world_vae(settings, bank, progress=False, held_out=fixed)
    first, last = run.curve[0], run.curve[-1]
    assert [c["step"] for c in run.curve] == [0, 40]
    # Measured: whole crops 12.2 -> 14.5 dB, object pixels 8.9 -> 15.7 dB (they weigh 4x in the loss).
    assert last["psnr_whole"] > first["psnr_whole"] + 1.5
    assert last["psnr_mask"] > first["psnr_mask"] + 4.0
    assert run.vae.config.scaling_factor > 0
    again = world_vae.train_world_vae(settings, bank, progress=False, held_out=fixed)
    assert again.curve[-1]["psnr_whole"] == last["psnr_whole"]  # seeded: the same run twice


def test_base_stage_fits_a_repeated_batch(bank, encoder, monkeypatch):
    from diffusers import AutoencoderKL

    from anydoor.presets import tiny_vae_config
    from anydoor.training import world_base

    monkeypatch.setattr(world_base, "scene_crops", _fixed_batch(bank, 8))
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config())
    held = world_base.held_out_batch(vae, encoder, 64, count=8)
    settings = world_base.WorldBaseSettings(steps=40, batch_size=8, caption_dropout=0.0, eval_every=40,
                                            learning_rate=3e-3)
    run = world_base.train_world_base(settings, bank, vae, encoder, progress=False, held=held)
    first, last = run.curve[0], run.curve[-1]
    assert last["loss_caption"] < 0.8 * first["loss_caption"]
    assert set(last) >= {"loss_caption", "loss_empty", "loss_shuffled"}


def test_shipped_vae_and_base_unet_load_and_match_their_manifest():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from anydoor import world
    from anydoor.presets import TINY_CROSS_ATTENTION_DIM
    from anydoor.training.world_vae import held_out_crops, reconstruction_scores

    manifest = world.load_manifest()
    vae = AutoencoderKL.from_pretrained(world.vae_path(), torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(world.base_unet_path(), torch_dtype=torch.float32)
    assert vae.config.latent_channels == 4 and 2 ** (len(vae.config.block_out_channels) - 1) == 4
    assert unet.config.cross_attention_dim == TINY_CROSS_ATTENTION_DIM
    # The recorded held-out PSNR is that of the shipped (fp16-stored) weights.
    recorded = manifest["stages"]["vae"]["log"]["shipped"]
    scores = reconstruction_scores(world.load_vae(), *held_out_crops())
    assert scores["psnr_mask"] == pytest.approx(recorded["psnr_mask"], abs=0.1)
    assert scores["psnr_whole"] == pytest.approx(recorded["psnr_whole"], abs=0.1)
    # The base reads its captions: held-out loss with the crops' own captions below the empty caption's.
    final = manifest["stages"]["base_unet"]["log"]["final"]
    assert final["loss_caption"] < final["loss_empty"] and final["loss_caption"] < final["loss_shuffled"]


def test_world_sample_writes_a_grid_of_the_asked_size(tmp_path, capsys):
    from anydoor.cli import main

    out = tmp_path / "one.png"
    assert main(["world-sample", "a red striped ellipse", "--out", str(out), "--n", "1", "--size", "48",
                 "--steps", "2", "--scale", "1"]) == 0
    assert PIL.Image.open(out).size == (48, 48)
    grid = tmp_path / "grid.png"
    assert main(["world-sample", "a green blob on a noisy background", "--out", str(grid), "--n", "3",
                 "--columns", "2", "--size", "32", "--steps", "2", "--scale", "2"]) == 0
    assert PIL.Image.open(grid).size == (2 * 64 + 2, 2 * 64 + 2)
    assert main(["world-sample", "a red blob", "--out", str(out), "--size", "30"]) == 2
    assert "size must be a positive multiple of 8" in capsys.readouterr().err
    assert main(["world-sample", "a crimson blob", "--out", str(out), "--n", "1", "--steps", "1"]) == 0
    assert "['crimson']" in capsys.readouterr().err


def test_sample_captions_is_seeded():
    from anydoor.world.text_to_image import load_text_to_image, sample_captions

    pipe, encoder = load_text_to_image()
    a = sample_captions(pipe, encoder, ["a red blob", "a blue polygon"], seed=3, num_inference_steps=2, size=32)
    b = sample_captions(pipe, encoder, ["a red blob"], seed=3, num_inference_steps=2, size=32)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a[:1], b)  # sample i's noise depends on (seed, i) only
    with pytest.raises(ValueError, match="captions is empty"):
        sample_captions(pipe, encoder, [], num_inference_steps=2)

