"""Detail extractor (zero, frozen conv_in: DESIGN.md 1c) and the denoiser wiring."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from anydoor.models.denoiser import (
    TRAINABLE_RECIPES,
    detail_residuals,
    predict_noise,
    set_trainable,
    trainable_parameters,
)
from anydoor.models.detail_extractor import CONV_IN_PREFIX, build_detail_extractor, zero_conv_in
from anydoor.models.id_extractors import DINOv2IDExtractor
from anydoor.presets import TINY_CONDITIONING_CHANNELS, tiny_dinov2_config, tiny_unet_config

NUM_OUTPUTS = 5  # tiny UNet: conv_in + (resnet, downsample) + resnet skips, and the middle block


def _randomise_zero_convs(controlnet: ControlNetModel, seed: int = 0) -> None:
    """The zero-initialised output convs make every residual zero at init;
    give them weights so the residuals carry the hint."""
    generator = torch.Generator().manual_seed(seed)
    convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=generator))


def _plain_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """diffusers' ControlNet as is: conv_in copied from the UNet."""
    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS, conditioning_channels=4
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config())
    torch.manual_seed(1)
    controlnet = build_detail_extractor(unet, TINY_CONDITIONING_CHANNELS)
    _randomise_zero_convs(controlnet)
    return unet.eval(), controlnet.eval()


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 16, 16, generator=g)
    hint = torch.rand(batch, 4, 64, 64, generator=g) * 2 - 1
    tokens = torch.randn(batch, 7, 64, generator=g)
    timesteps = torch.tensor([10, 900][:batch] + [500] * max(0, batch - 2))
    return latents, hint, tokens, timesteps


def test_conv_in_is_zero_and_frozen(models):
    _, controlnet = models
    assert torch.count_nonzero(controlnet.conv_in.weight) == 0
    assert torch.count_nonzero(controlnet.conv_in.bias) == 0
    assert not any(p.requires_grad for p in controlnet.conv_in.parameters())
    assert controlnet.config.conditioning_channels == 4
    assert tuple(controlnet.config.conditioning_embedding_out_channels) == TINY_CONDITIONING_CHANNELS


def test_encoder_copied_from_unet(models):
    unet, controlnet = models
    for name, tensor in unet.down_blocks.state_dict().items():
        assert torch.equal(controlnet.down_blocks.state_dict()[name], tensor), name
    assert torch.equal(controlnet.time_embedding.linear_1.weight, unet.time_embedding.linear_1.weight)


def test_zero_conv_in_discards_existing_weights(models):
    unet, _ = models
    plain = _plain_controlnet(unet)
    assert torch.count_nonzero(plain.conv_in.weight) > 0
    assert zero_conv_in(plain) is plain
    assert torch.count_nonzero(plain.conv_in.weight) == 0 and not plain.conv_in.weight.requires_grad


def test_residuals_ignore_the_noisy_latent(models):
    unet, controlnet = models
    latents, hint, tokens, t = _inputs()
    with torch.no_grad():
        down_a, mid_a = detail_residuals(controlnet, hint, t, tokens, latents=latents)
        down_b, mid_b = detail_residuals(controlnet, hint, t, tokens, latents=torch.randn_like(latents) * 3)
        down_none, mid_none = detail_residuals(controlnet, hint, t, tokens)
    assert len(down_a) == NUM_OUTPUTS - 1
    assert mid_a.abs().max() > 0
    for x, y, z in zip([*down_a, mid_a], [*down_b, mid_b], [*down_none, mid_none]):
        assert torch.equal(x, y) and torch.equal(x, z)

    # A plain ControlNet (conv_in copied from the UNet) does read the latent.
    plain = _plain_controlnet(unet)
    shared = {k: v for k, v in controlnet.state_dict().items() if not k.startswith(CONV_IN_PREFIX)}
    plain.load_state_dict(shared, strict=False)
    with torch.no_grad():
        _, mid_plain_a = detail_residuals(plain, hint, t, tokens, latents=latents)
        _, mid_plain_b = detail_residuals(plain, hint, t, tokens, latents=torch.randn_like(latents) * 3)
    assert (mid_plain_a - mid_plain_b).abs().max() > 1e-4

    # ...while the hint does change the detail extractor's output.
    with torch.no_grad():
        _, mid_other_hint = detail_residuals(controlnet, -hint, t, tokens)
    assert (mid_other_hint - mid_a).abs().max() > 1e-4


def test_control_scale_per_output(models):
    _, controlnet = models
    latents, hint, tokens, t = _inputs()
    scales = [0.0, 0.5, 1.0, 2.0, 3.0]
    with torch.no_grad():
        down, mid = detail_residuals(controlnet, hint, t, tokens)
        down_s, mid_s = detail_residuals(controlnet, hint, t, tokens, control_scale=scales)
    for base, scaled, s in zip([*down, mid], [*down_s, mid_s], scales):
        assert torch.allclose(scaled, base * s)
    with pytest.raises(ValueError, match=f"{NUM_OUTPUTS} floats.*got 3"):
        detail_residuals(controlnet, hint, t, tokens, control_scale=[1.0, 1.0, 1.0])


def test_predict_noise_scale_zero_is_the_unet_alone(models):
    unet, controlnet = models
    latents, hint, tokens, t = _inputs()
    with torch.no_grad():
        alone = unet(latents, t, encoder_hidden_states=tokens).sample
        zero = predict_noise(unet, controlnet, latents, t, tokens, hint, control_scale=0.0)
        full = predict_noise(unet, controlnet, latents, t, tokens, hint, control_scale=1.0)
    assert torch.allclose(zero, alone, atol=1e-6)
    assert (full - alone).abs().max() > 1e-4


def test_predict_noise_with_precomputed_residuals(models):
    unet, controlnet = models
    latents, hint, tokens, t = _inputs()
    with torch.no_grad():
        residuals = detail_residuals(controlnet, hint, t, tokens, control_scale=0.7)
        direct = predict_noise(unet, controlnet, latents, t, tokens, hint, control_scale=0.7)
        cached = predict_noise(unet, controlnet, latents, t, tokens, hint=None, residuals=residuals)
    assert torch.equal(direct, cached)


@pytest.mark.parametrize("variant", ["hf", "rgb", "none"])
def test_batch_equals_single_calls(models, variant):
    unet, controlnet = models
    latents, hint, tokens, t = _inputs(batch=2, seed=3)
    if variant == "rgb":
        hint[:, :3] = hint[:, :3].clamp(-0.2, 0.8)
    elif variant == "none":  # black map in the box
        hint[:, :3] = -1.0
    with torch.no_grad():
        batch = predict_noise(unet, controlnet, latents, t, tokens, hint)
        singles = [
            predict_noise(unet, controlnet, latents[i : i + 1], t[i : i + 1], tokens[i : i + 1], hint[i : i + 1])
            for i in range(2)
        ]
    assert batch.shape == (2, 4, 16, 16)
    assert torch.allclose(batch, torch.cat(singles), atol=1e-5)


def test_bad_hints_are_rejected(models):
    _, controlnet = models
    _, hint, tokens, t = _inputs()
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\).*multiples of 4.*\(2, 3, 64, 64\)"):
        detail_residuals(controlnet, hint[:, :3], t, tokens)
    with pytest.raises(ValueError, match=r"got \(2, 4, 62, 62\)"):
        detail_residuals(controlnet, hint[:, :, :62, :62], t, tokens)
    with pytest.raises(ValueError, match="hint must be"):
        detail_residuals(controlnet, hint[0], t, tokens)


def test_build_detail_extractor_rejects_bad_arguments(models):
    unet, controlnet = models
    with pytest.raises(TypeError, match="UNet2DConditionModel.*ControlNetModel"):
        build_detail_extractor(controlnet)
    with pytest.raises(ValueError, match="conditioning_embedding_out_channels"):
        build_detail_extractor(unet, ())
    with pytest.raises(TypeError, match="ControlNetModel"):
        zero_conv_in(unet)


# --- what trains -----------------------------------------------------------------------


@pytest.fixture()
def trio():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config())
    torch.manual_seed(1)
    controlnet = build_detail_extractor(unet, TINY_CONDITIONING_CHANNELS)
    _randomise_zero_convs(controlnet)
    torch.manual_seed(2)
    extractor = DINOv2IDExtractor(backbone_config=tiny_dinov2_config(), cross_attention_dim=64)
    return unet, controlnet, extractor


def test_trainable_parameter_sets(trio):
    unet, controlnet, extractor = trio
    released = trainable_parameters(unet, controlnet, extractor, "released")
    forbidden = (
        "unet.down_blocks.",
        "unet.mid_block.",
        "unet.conv_in.",
        "unet.time_embedding.",
        "id_extractor.backbone.",
        "controlnet.conv_in.",
    )
    assert not [name for name in released if name.startswith(forbidden)]
    required = {
        "unet.conv_out.weight",
        "unet.conv_norm_out.weight",
        "controlnet.controlnet_mid_block.weight",
        "controlnet.controlnet_cond_embedding.conv_in.weight",  # the hint embedding does train
        "id_extractor.projector.weight",
    }
    assert required <= set(released)
    decoder = ("up_blocks.", "conv_norm_out.", "conv_out.")
    expected = (
        sum(p.numel() for n, p in unet.named_parameters() if n.startswith(decoder))
        + sum(p.numel() for p in controlnet.parameters())
        - sum(p.numel() for p in controlnet.conv_in.parameters())
        + sum(p.numel() for p in extractor.projector.parameters())
    )
    assert sum(p.numel() for p in released.values()) == expected

    full = trainable_parameters(unet, controlnet, extractor, "full_unet")
    assert {f"unet.{n}" for n, _ in unet.named_parameters()} <= set(full)
    assert set(released) <= set(full)
    assert not [name for name in full if name.startswith(("id_extractor.backbone.", "controlnet.conv_in."))]

    with pytest.raises(ValueError, match=r"\('released', 'full_unet'\).*'all'"):
        trainable_parameters(unet, controlnet, extractor, "all")


@pytest.mark.parametrize("recipe", TRAINABLE_RECIPES)
def test_optimiser_step_keeps_conv_in_zero_and_frozen_parts_fixed(trio, recipe):
    unet, controlnet, extractor = trio
    selected = set_trainable(unet, controlnet, extractor, recipe)
    for prefix, module in (("unet.", unet), ("controlnet.", controlnet), ("id_extractor.", extractor)):
        for name, param in module.named_parameters():
            assert param.requires_grad == (prefix + name in selected), prefix + name

    before = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    backbone_before = {k: v.clone() for k, v in extractor.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW(selected.values(), lr=1e-2, weight_decay=1e-2)
    latents, hint, _, t = _inputs()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for module in (unet, controlnet, extractor):
        module.train()
    eps = predict_noise(unet, controlnet, latents, t, extractor(images), hint)
    torch.nn.functional.mse_loss(eps, torch.zeros_like(eps)).backward()
    optimizer.step()

    assert controlnet.conv_in.weight.grad is None
    assert torch.count_nonzero(controlnet.conv_in.weight) == 0 and torch.count_nonzero(controlnet.conv_in.bias) == 0
    assert all(torch.equal(v, extractor.backbone.state_dict()[k]) for k, v in backbone_before.items())
    after = unet.state_dict()
    encoder, decoder = "down_blocks.0.resnets.0.conv1.weight", "up_blocks.1.resnets.0.conv1.weight"
    assert torch.equal(after[encoder], before[encoder]) == (recipe == "released")
    assert not torch.equal(after[decoder], before[decoder])
    assert extractor.projector.weight.grad is not None
