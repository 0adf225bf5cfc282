"""ID extractors: token counts, unconditional tokens, freezing, save/load, and
the original DINOv2 positional-embedding rule at 224 px (DESIGN.md 1c)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from anydoor.models.id_extractors import (
    ID_EXTRACTOR_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    CLIPIDExtractor,
    DINOv2IDExtractor,
    build_id_extractor,
    interpolate_dinov2_pos_embed,
)
from anydoor.presets import tiny_clip_vision_config, tiny_dinov2_config

CROSS_DIM = 32
EXPECTED_TOKENS = {"dinov2": 257, "dinov2-global": 1, "clip": 257}


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_id_extractor(
        name,
        cross_attention_dim=CROSS_DIM,
        backbone_config=tiny_dinov2_config(),
        vision_config=tiny_clip_vision_config(),
    )


def _images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- the original DINOv2 interpolation rule -------------------------------------------


def _cubic_weights(n_in: int, n_out: int, scale_factor: float) -> np.ndarray:
    """PyTorch's bicubic resampling (Keys kernel, a=-0.75, align_corners=False,
    border-clamped) along one axis, written out as an (n_out, n_in) matrix."""
    a = -0.75

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale_factor - 0.5  # the given scale, not n_in / n_out
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            weights[i, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return weights


def test_interpolation_matches_hand_written_bicubic_with_dinov2_scale():
    grid, target, dim = 37, 16, 3
    pos = torch.randn(1, 1 + grid * grid, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = interpolate_dinov2_pos_embed(pos, target_grid=target)

    assert out.shape == (1, 1 + target * target, dim)
    assert out.dtype == pos.dtype
    assert torch.equal(out[:, 0], pos[:, 0])  # CLS row kept as is
    w = _cubic_weights(grid, target, (target + 0.1) / grid)
    patches = pos[0, 1:].reshape(grid, grid, dim).numpy()
    expected = np.einsum("ih,hwc,jw->ijc", w, patches, w).reshape(target * target, dim)
    np.testing.assert_allclose(out[0, 1:].numpy(), expected, atol=1e-5)

    # transformers' own rule (size=(16, 16)) samples elsewhere: different tokens.
    by_size = F.interpolate(
        pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2), size=(target, target), mode="bicubic"
    )
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, target * target, dim)
    assert (by_size - out[:, 1:]).abs().max() > 1e-2


def test_interpolation_keeps_a_constant_grid_constant():
    pos = torch.full((1, 1 + 5 * 5, 4), 0.25)
    pos[:, 0] = -1.0
    out = interpolate_dinov2_pos_embed(pos, target_grid=3)
    assert torch.allclose(out[:, 1:], torch.full((1, 9, 4), 0.25), atol=1e-6)
    assert torch.equal(out[:, 0], pos[:, 0])


def test_interpolation_rejects_bad_tables():
    with pytest.raises(ValueError, match=r"1 \+ N\*N"):
        interpolate_dinov2_pos_embed(torch.zeros(1, 1 + 12, 4))
    with pytest.raises(ValueError, match=r"\(1, 1 \+ N\*N, D\)"):
        interpolate_dinov2_pos_embed(torch.zeros(1370, 4))
    with pytest.raises(TypeError, match="pos_embed"):
        interpolate_dinov2_pos_embed(np.zeros((1, 1370, 4)))


def test_dinov2_at_224_uses_its_stored_table_without_reinterpolating():
    torch.manual_seed(0)
    backbone = Dinov2Model(Dinov2Config(**tiny_dinov2_config(), image_size=224))
    embeddings = backbone.embeddings
    table = embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 64), 224, 224)
    assert table is embeddings.position_embeddings


def test_from_backbone_regrids_a_518_model_with_the_original_rule():
    torch.manual_seed(1)
    source = Dinov2Model(Dinov2Config(**tiny_dinov2_config(), image_size=518)).eval()
    assert source.embeddings.position_embeddings.shape[1] == 1 + 37 * 37
    extractor = DINOv2IDExtractor.from_backbone(
        source, cross_attention_dim=CROSS_DIM, generator=torch.Generator().manual_seed(0)
    )
    images = _images()

    # Independent path: embeddings by hand with the original-rule grid, then
    # the source model's own blocks and final norm.
    pos = interpolate_dinov2_pos_embed(source.embeddings.position_embeddings.detach(), 16)
    with torch.no_grad():
        pixels = _normalise(images, IMAGENET_MEAN, IMAGENET_STD)
        patches = source.embeddings.patch_embeddings(pixels)
        x = torch.cat([source.embeddings.cls_token.expand(2, -1, -1), patches], dim=1) + pos
        hidden = source.layernorm(source.encoder(x).last_hidden_state)
        expected = extractor.projector(hidden)
        tokens = extractor(images)
    assert torch.allclose(tokens, expected, atol=1e-5)

    # The source run at 224 px interpolates with transformers' size=(16, 16) rule.
    with torch.no_grad():
        transformers_rule = extractor.projector(source(pixel_values=pixels).last_hidden_state)
    assert (transformers_rule - tokens).abs().max() > 1e-3

    # Projector init is reproducible from the generator; backbone stays frozen.
    again = DINOv2IDExtractor.from_backbone(
        source, cross_attention_dim=CROSS_DIM, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.projector.weight, extractor.projector.weight)
    assert not any(p.requires_grad for p in extractor.backbone.parameters())
    assert extractor.config.image_size == 224 and extractor.backbone.config.image_size == 224


def test_from_backbone_loads_a_saved_model_by_path(tmp_path):
    torch.manual_seed(1)
    source = Dinov2Model(Dinov2Config(**tiny_dinov2_config(), image_size=518))
    source.save_pretrained(tmp_path)
    from_object = DINOv2IDExtractor.from_backbone(source, generator=torch.Generator().manual_seed(0))
    from_path = DINOv2IDExtractor.from_backbone(str(tmp_path), generator=torch.Generator().manual_seed(0))
    images = _images(batch=1)
    assert torch.equal(from_path(images), from_object(images))
    with pytest.raises(ValueError, match="hub_kwargs"):
        DINOv2IDExtractor.from_backbone(source, revision="main")
    with pytest.raises(TypeError, match="Dinov2Model"):
        DINOv2IDExtractor.from_backbone(torch.nn.Linear(2, 2))


# --- contract shared by the three extractors -------------------------------------------


@pytest.mark.parametrize("name", ID_EXTRACTOR_NAMES)
def test_tokens_shape_and_unconditional_tokens(name):
    extractor = _build(name)
    tokens = extractor(_images())
    assert tokens.shape == (2, EXPECTED_TOKENS[name], CROSS_DIM)
    assert extractor.num_tokens == EXPECTED_TOKENS[name]
    assert extractor.cross_attention_dim == CROSS_DIM

    uncond = extractor.unconditional_tokens(batch_size=3)
    assert uncond.shape == (3, EXPECTED_TOKENS[name], CROSS_DIM)
    assert torch.allclose(uncond, extractor(torch.zeros(3, 3, 224, 224)), atol=1e-6)
    assert torch.allclose(uncond[0], uncond[2], atol=1e-6)
    # Zeros before normalisation: not the tokens of a normalised-zero image.
    assert (uncond[:1] - extractor(torch.full((1, 3, 224, 224), 0.45))).abs().max() > 1e-3


@pytest.mark.parametrize("name", ID_EXTRACTOR_NAMES)
def test_backbone_frozen_and_kept_in_eval(name):
    extractor = _build(name)
    trainable = [n for n, p in extractor.named_parameters() if p.requires_grad]
    assert trainable == ["projector.weight", "projector.bias"]
    extractor.train()
    assert extractor.training and extractor.projector.training
    assert not any(m.training for m in extractor.backbone.modules())

    tokens = extractor(_images())
    tokens.square().mean().backward()
    assert extractor.projector.weight.grad is not None
    assert all(p.grad is None for p in extractor.backbone.parameters())


@pytest.mark.parametrize("name", ID_EXTRACTOR_NAMES)
def test_save_pretrained_round_trip(name, tmp_path):
    extractor = _build(name).eval()
    extractor.save_pretrained(tmp_path)
    loaded = type(extractor).from_pretrained(tmp_path)
    images = _images()
    assert torch.equal(loaded(images), extractor(images))
    assert _public(loaded.config) == _public(extractor.config)
    rebuilt = type(extractor).from_config(extractor.config)
    assert _public(rebuilt.config) == _public(extractor.config)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())


def test_dinov2_tokens_are_the_projected_last_hidden_state_and_global_is_its_cls_row():
    full = _build("dinov2")
    images = _images()
    with torch.no_grad():
        hidden = full.backbone(pixel_values=_normalise(images, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
        expected = full.projector(hidden)
    tokens = full(images)
    assert torch.allclose(tokens, expected, atol=1e-6)

    global_only = _build("dinov2-global")
    global_only.load_state_dict(full.state_dict())
    assert torch.allclose(global_only(images), tokens[:, :1], atol=1e-6)


def test_clip_tokens_are_class_and_patch_tokens_after_ln_post():
    extractor = _build("clip")
    visual = extractor.backbone
    images = _images()
    with torch.no_grad():
        x = visual._embeds(_normalise(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        expected = extractor.projector(visual.ln_post(visual.transformer(x)))
    assert torch.allclose(extractor(images), expected, atol=1e-5)


def test_from_open_clip_wraps_the_vision_tower(monkeypatch):
    import open_clip
    from open_clip import factory

    tiny = {
        "embed_dim": 16,
        "vision_cfg": tiny_clip_vision_config(),
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
    }
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", {**factory._MODEL_CONFIGS, "anydoor-tiny-test": tiny})
    torch.manual_seed(0)
    extractor = CLIPIDExtractor.from_open_clip(
        "anydoor-tiny-test", cross_attention_dim=CROSS_DIM, generator=torch.Generator().manual_seed(0)
    )
    assert extractor.config.model_name == "anydoor-tiny-test"
    assert extractor.config.vision_config["quick_gelu"] is False

    torch.manual_seed(0)
    visual = open_clip.create_model("anydoor-tiny-test").visual.eval()
    images = _images()
    with torch.no_grad():
        x = visual._embeds(_normalise(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        expected = extractor.projector(visual.ln_post(visual.transformer(x)))
    assert torch.allclose(extractor(images), expected, atol=1e-5)

    with pytest.raises(ValueError, match="not an open_clip model"):
        CLIPIDExtractor.from_open_clip("no-such-model")


# --- bad input ------------------------------------------------------------------------


def test_errors_name_the_argument_and_value():
    extractor = _build("dinov2")
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\), got \(2, 3, 64, 64\)"):
        extractor(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\), got \(3, 224, 224\)"):
        extractor(torch.rand(3, 224, 224))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor(_images() * 255)
    with pytest.raises(TypeError, match="floating-point"):
        extractor(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        extractor(np.zeros((1, 3, 224, 224), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        extractor.unconditional_tokens(0)

    with pytest.raises(ValueError, match="'dinov2', 'dinov2-global', 'clip'.*'vgg'"):
        build_id_extractor("vgg", cross_attention_dim=CROSS_DIM, backbone_config=tiny_dinov2_config())
    with pytest.raises(ValueError, match="backbone_config"):
        build_id_extractor("dinov2", cross_attention_dim=CROSS_DIM)
    with pytest.raises(ValueError, match="vision_config"):
        build_id_extractor("clip", cross_attention_dim=CROSS_DIM)
    with pytest.raises(ValueError, match="tokens must be one of"):
        DINOv2IDExtractor(backbone_config=tiny_dinov2_config(), tokens="patches")
    with pytest.raises(ValueError, match="image_size"):
        DINOv2IDExtractor(backbone_config={**tiny_dinov2_config(), "image_size": 518})
    with pytest.raises(ValueError, match="CLIPVisionCfg"):
        CLIPIDExtractor(vision_config={**tiny_clip_vision_config(), "depth": 3})
    with pytest.raises(ValueError, match="attentional_pool"):
        CLIPIDExtractor(vision_config={**tiny_clip_vision_config(), "attentional_pool": True})
