"""Presets: the embedded default's components and the full-size configs."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import Dinov2Config, Dinov2Model

from anydoor.models.denoiser import predict_noise
from anydoor.models.id_extractors import CLIPIDExtractor, DINOv2IDExtractor
from anydoor.presets import (
    DINOV2_GIANT_IMAGE_SIZE,
    TINY_IMAGE_SIZE,
    TINY_PREDICTION_TYPE,
    full_size_components,
    full_size_configs,
    prediction_target,
    sampling_scheduler,
    tiny_components,
    tiny_unet_config,
    tiny_vae_config,
    training_scheduler,
)

# Parameter counts of the released checkpoint's state dict (DESIGN.md 1c,
# released_checkpoint_manifest.json), exact.
RELEASED_COUNTS = {
    "unet": 865_910_724,
    "controlnet": 364_228_384,
    "vae": 83_653_863,
    "dinov2_518": 1_136_480_768,
    "projector": 1_573_888,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=0)


def test_tiny_components_classes_and_sizes(tiny):
    assert set(tiny) == {"vae", "unet", "controlnet", "id_extractor", "scheduler"}
    assert isinstance(tiny["vae"], AutoencoderKL)
    assert isinstance(tiny["unet"], UNet2DConditionModel)
    assert isinstance(tiny["controlnet"], ControlNetModel)
    assert isinstance(tiny["id_extractor"], DINOv2IDExtractor)
    assert isinstance(tiny["scheduler"], DDIMScheduler)

    n = _count(tiny["unet"]) + _count(tiny["controlnet"])
    assert 1.2e6 < n < 1.4e6  # "about 1.3M" (DESIGN.md 4)
    assert torch.count_nonzero(tiny["controlnet"].conv_in.weight) == 0

    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) * 2 - 1
    with torch.no_grad():
        latents = tiny["vae"].encode(images).latent_dist.mean
    assert latents.shape == (2, 4, 16, 16)
    assert tiny["vae"].config.scaling_factor == 1.0


def test_tiny_components_denoise_end_to_end(tiny):
    reference = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    hint = torch.rand(2, 4, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = tiny["id_extractor"](reference)
        eps = predict_noise(tiny["unet"], tiny["controlnet"], latents, torch.tensor([981, 1]), tokens, hint)
    assert tokens.shape == (2, 257, tiny["unet"].config.cross_attention_dim)
    assert eps.shape == latents.shape and torch.isfinite(eps).all()


def test_tiny_components_are_deterministic_and_leave_global_rng_alone(tiny):
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # the result must not depend on the global RNG
    again = tiny_components(seed=0)
    assert torch.equal(torch.random.get_rng_state(), torch.manual_seed(1234).get_state())
    torch.random.set_rng_state(state)
    for key in ("vae", "unet", "controlnet", "id_extractor"):
        assert _same_weights(tiny[key], again[key]), key

    other_seed = tiny_components(seed=1)
    assert not _same_weights(tiny["unet"], other_seed["unet"])

    # Each model has its own seed: choosing the CLIP arm or passing a VAE
    # leaves the UNet and the detail extractor unchanged.
    clip_arm = tiny_components(seed=0, id_extractor="clip", vae=tiny["vae"])
    assert isinstance(clip_arm["id_extractor"], CLIPIDExtractor)
    assert clip_arm["vae"] is tiny["vae"]
    assert _same_weights(tiny["unet"], clip_arm["unet"])
    assert _same_weights(tiny["controlnet"], clip_arm["controlnet"])
    assert tiny_components(seed=0, id_extractor="dinov2-global")["id_extractor"].num_tokens == 1


def test_tiny_components_reject_bad_arguments(tiny):
    with pytest.raises(ValueError, match="id_extractor must be one of.*'vgg'"):
        tiny_components(id_extractor="vgg")
    with pytest.raises(ValueError, match="seed"):
        tiny_components(seed=-1)
    with pytest.raises(TypeError, match="AutoencoderKL"):
        tiny_components(vae=tiny["unet"])
    x8_config = tiny_vae_config()
    x8_config.update(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
    )
    x8 = AutoencoderKL(**x8_config)
    with pytest.raises(ValueError, match="x4.*got x8"):
        tiny_components(vae=x8)


def test_schedulers_follow_the_released_recipe():
    ddim = sampling_scheduler()
    ddim.set_timesteps(50)
    assert ddim.timesteps[0].item() == 981 and ddim.timesteps[-1].item() == 1 and len(ddim.timesteps) == 50
    assert ddim.config.prediction_type == "epsilon" and not ddim.config.clip_sample
    assert ddim.final_alpha_cumprod.item() == pytest.approx(ddim.alphas_cumprod[0].item())  # set_alpha_to_one=False

    ddpm = training_scheduler()
    assert ddpm.config.num_train_timesteps == 1000 and ddpm.config.prediction_type == "epsilon"
    assert torch.equal(ddpm.betas, ddim.betas)
    # scaled_linear: sqrt-spaced betas from 0.00085 to 0.012
    assert ddpm.betas[0].item() == pytest.approx(0.00085) and ddpm.betas[-1].item() == pytest.approx(0.012)
    assert ddpm.betas[500].item() == pytest.approx(((0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * 500 / 999) ** 2))


def test_prediction_target_is_eps_or_v_by_hand():
    latents = torch.tensor([[[[2.0]]]])
    noise = torch.tensor([[[[-1.0]]]])
    t = torch.tensor([981])
    assert torch.equal(prediction_target(training_scheduler(), latents, noise, t), noise)
    abar = training_scheduler().alphas_cumprod[981]
    v = prediction_target(training_scheduler("v_prediction"), latents, noise, t)
    assert v.item() == pytest.approx((abar.sqrt() * -1.0 - (1 - abar).sqrt() * 2.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="prediction_type='sample' is not one of epsilon, v_prediction"):
        training_scheduler("sample")


def test_tiny_preset_predicts_v_and_the_full_size_one_eps():
    assert tiny_components(seed=0)["scheduler"].config.prediction_type == TINY_PREDICTION_TYPE == "v_prediction"
    assert full_size_components()["scheduler"].config.prediction_type == "epsilon"
    assert tiny_unet_config()["norm_num_groups"] == 8  # 4+ channels per group at 32 channels


def test_full_size_parameter_counts_match_the_released_checkpoint():
    components = full_size_components()
    assert all(p.is_meta for p in components["unet"].parameters())
    assert _count(components["unet"]) == RELEASED_COUNTS["unet"]
    assert _count(components["controlnet"]) == RELEASED_COUNTS["controlnet"]
    assert _count(components["vae"]) == RELEASED_COUNTS["vae"]
    assert _count(components["id_extractor"].projector) == RELEASED_COUNTS["projector"]
    assert components["id_extractor"].num_tokens == 257
    assert components["id_extractor"].backbone.embeddings.position_embeddings.shape == (1, 257, 1536)

    with torch.device("meta"):
        dinov2 = Dinov2Model(Dinov2Config(**full_size_configs()["dinov2"], image_size=DINOV2_GIANT_IMAGE_SIZE))
    assert _count(dinov2) == RELEASED_COUNTS["dinov2_518"]
    # At 224 px only the positional table shrinks: 1370 -> 257 rows of 1536.
    assert _count(dinov2) - _count(components["id_extractor"].backbone) == (1370 - 257) * 1536
