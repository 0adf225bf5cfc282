"""Identity and ground-truth metrics, crops and metric backbones (eval/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.backbones import (
    ImageEmbedder,
    load_backbones,
    load_clip_embedder,
    load_dino_embedder,
    random_clip_embedder,
    random_dino_embedder,
)
from eval.crops import WHITE, copy_paste, generated_region, reference_region, square_tensor
from eval.metrics import (
    PSNR_CAP_DB,
    CLIPImageSimilarity,
    DINOImageSimilarity,
    MaskedPSNR,
    diversity,
    embed_similarity,
    image_to_tensor,
    masked_psnr,
    masked_ssim,
    metric_label,
)


@pytest.fixture(scope="module")
def backbones():
    return load_backbones(metric_backbones="random")


def _images(seed: int, n: int = 3, size: int = 48) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- labels


def test_metric_label_names_where_the_backbones_come_from():
    assert metric_label("clip_i", "real") == "CLIP-I" and metric_label("dino_i", "real") == "DINO-I"
    assert metric_label("clip_i", "in-world") == "CLIP-I (in-world)"
    assert metric_label("dino_i", "in-world") == "DINO-I (in-world)"
    assert metric_label("clip_i", "random") == "CLIP-sim (random-init)"
    assert metric_label("dino_i", "random") == "DINO-sim (random-init)"
    assert metric_label("psnr_mask") == metric_label("psnr_mask", "random") == "PSNR in target mask (dB)"
    with pytest.raises(ValueError, match="source='calibrated'"):
        metric_label("clip_i", "calibrated")
    with pytest.raises(ValueError, match="name='lpips'"):
        metric_label("lpips", True)


# --------------------------------------------------------------------------- similarity


def test_image_to_tensor_layout_range_and_errors():
    image = np.zeros((2, 3, 3), np.uint8)
    image[1, 2] = (255, 0, 51)
    x = image_to_tensor(image)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, :, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert float(x.sum()) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="HxWx3 uint8 array, got float32"):
        image_to_tensor(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(2, 3\)"):
        image_to_tensor(image[..., 0])


def test_embed_similarity_hand_computed():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    torch.testing.assert_close(embed_similarity(a, b), torch.tensor([100.0, -100.0, 0.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        embed_similarity(a, b[:2])


@pytest.mark.parametrize("metric_cls, family", [(CLIPImageSimilarity, "clip"), (DINOImageSimilarity, "dino")])
def test_similarity_metric_identical_100_different_lower(backbones, metric_cls, family):
    embedder = getattr(backbones, family)
    metric = metric_cls(embedder, allow_random=True)
    assert metric.embedder is embedder and embedder in list(metric.modules())  # moves with .to()
    a, b = _images(0), _images(1)
    metric.update(a, a)
    torch.testing.assert_close(metric.compute(), torch.tensor(100.0), atol=1e-3, rtol=0)
    metric.update(a, b)
    per_sample = metric.compute_per_sample()
    assert per_sample.shape == (6,) and (per_sample[3:] < 99.9).all()
    assert metric.compute() < 100.0 - 1e-3
    # precomputed reference embeddings give the same values as reference images
    metric.reset()
    metric.update(a, reference_embeddings=embedder(b))
    torch.testing.assert_close(metric.compute_per_sample(), per_sample[3:])
    assert metric.source == "random" and metric.label == f"{family.upper()}-sim (random-init)"


def test_similarity_metric_refuses_random_backbone_and_wrong_family(backbones):
    with pytest.raises(ValueError, match="random weights.*allow_random=True"):
        CLIPImageSimilarity(backbones.clip)
    with pytest.raises(ValueError, match="clip ImageEmbedder"):
        CLIPImageSimilarity(backbones.dino, allow_random=True)
    metric = DINOImageSimilarity(backbones.dino, allow_random=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(_images(0) * 2, _images(0))
    with pytest.raises(ValueError, match="exactly one"):
        metric.update(_images(0))


# --------------------------------------------------------------------------- ground truth


def test_masked_psnr_hand_computed_and_capped():
    target = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 2:6] = True
    preds = torch.ones(2, 3, 8, 8)  # wrong everywhere outside the mask: ignored
    preds[0][:, mask[0]] = 0.1  # MSE 0.01 inside -> 20 dB
    preds[1][:, mask[1]] = 0.0  # identical inside -> capped
    torch.testing.assert_close(masked_psnr(preds, target, mask), torch.tensor([20.0, PSNR_CAP_DB]))
    metric = MaskedPSNR()
    metric.update(preds, target, mask)
    torch.testing.assert_close(metric.compute(), torch.tensor((20.0 + PSNR_CAP_DB) / 2))
    with pytest.raises(ValueError, match="mask is empty"):
        masked_psnr(preds, target, torch.zeros_like(mask))


def test_masked_ssim_ignores_changes_outside_the_window():
    image = _images(2, n=1, size=40)
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[:, 5:15, 5:15] = True
    far = image.clone()
    far[..., 25:, 25:] = 1.0 - far[..., 25:, 25:]  # > 5 px (the Gaussian window's radius) away
    near = image.clone()
    near[..., 10:15, 10:15] = 0.0
    torch.testing.assert_close(masked_ssim(image, image, mask), torch.tensor([1.0]))
    torch.testing.assert_close(masked_ssim(far, image, mask), torch.tensor([1.0]))
    assert masked_ssim(near, image, mask).item() < 0.9


def test_diversity_of_seeds():
    a = _images(3, n=1, size=16)
    assert diversity(torch.cat([a, a, a])) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.cat([a, _images(4, n=1, size=16)])) > 0.5
    assert np.isnan(diversity(a))
    with pytest.raises(ValueError, match="at least 6 px"):
        diversity(torch.rand(2, 3, 4, 4))


# --------------------------------------------------------------------------- crops


def test_generated_region_picks_exactly_the_box_and_mask():
    composite = np.zeros((20, 30, 3), np.uint8)
    composite[..., 0] = np.arange(30)[None, :]  # column index in red, row index in green
    composite[..., 1] = np.arange(20)[:, None]
    mask = np.zeros((20, 30), bool)
    mask[4:9, 10:16] = True
    mask[4, 10] = False  # a shape, not a full box
    region = generated_region(composite, mask)
    assert region.shape == (5, 6, 3)
    assert (region[1:, :, 0] == np.arange(10, 16)).all() and (region[1:, :, 1].T == np.arange(5, 9)).all()
    assert (region[0, 0] == WHITE).all() and (region[0, 1] == [11, 4, 0]).all()
    box = generated_region(composite, mask, remove_background=False)
    assert (box[0, 0] == [10, 4, 0]).all()


def test_reference_region_and_square_tensor():
    image = np.full((10, 12, 3), 40, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:5] = True
    image[2:6, 3:5] = 200
    image[2, 3] = 7
    mask[2, 3] = False
    region = reference_region(image, mask)
    assert region.shape == (4, 2, 3) and (region[0, 0] == WHITE).all() and (region[1:, :] == 200).all()
    square = square_tensor(region, 4)  # 4x2 -> padded to 4x4 (one white column each side)
    assert square.shape == (3, 4, 4)
    torch.testing.assert_close(square[:, :, 0], torch.ones(3, 4))
    torch.testing.assert_close(square[:, 1:, 1], torch.full((3, 3), 200 / 255))
    with pytest.raises(ValueError, match="size must be a positive integer"):
        square_tensor(region, 0)


def test_copy_paste_resizes_the_object_into_the_box():
    obj = np.zeros((6, 6, 3), np.uint8)
    obj_mask = np.zeros((6, 6), bool)
    obj_mask[1:3, 2:4] = True
    obj[1:3, 2:4] = 255
    scene = np.full((10, 10, 3), 50, np.uint8)
    placement = np.zeros((10, 10), bool)
    placement[3:7, 2:6] = True  # 4x4 box: the 2x2 object scaled by 2
    out = copy_paste(obj, obj_mask, scene, placement)
    expected = scene.copy()
    expected[3:7, 2:6] = 255
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- backbones


def test_random_backbones_are_seeded_named_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a = random_clip_embedder(generator=torch.Generator().manual_seed(5))
    b = random_clip_embedder(generator=torch.Generator().manual_seed(5))
    c = random_clip_embedder(generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), state)
    x = _images(0, n=2, size=64)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert a.name == "random-ViT-B-32-tiny" and a.source == "random" and a.family == "clip"
    assert random_dino_embedder("facebook/dinov2-small").name == "random-dinov2-small-tiny"
    assert type(random_dino_embedder("facebook/dinov2-small").encoder).__name__ == "Dinov2Model"


def test_missing_weights_raise_a_clear_error():
    with pytest.raises(FileNotFoundError, match=r"ViT-B-32 \(pretrained='openai'\).*local weights file.*metric_backbones='world'"):
        load_clip_embedder(local_files_only=True)
    with pytest.raises(FileNotFoundError, match=r"'facebook/dino-vits16'.*hf download facebook/dino-vits16"):
        load_dino_embedder(local_files_only=True)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        load_clip_embedder("ViT-B-32", "no-such-tag", local_files_only=True)


def test_trained_weights_load_from_local_files(tmp_path):
    """The real-weight code paths, on tiny models written here: embeddings equal
    the libraries' own forward passes."""
    import open_clip
    from transformers import ViTConfig, ViTModel

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "Tiny-Eval-CLIP.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model("Tiny-Eval-CLIP").eval()
    torch.save(model.state_dict(), tmp_path / "tiny_clip.pt")
    clip = load_clip_embedder("Tiny-Eval-CLIP", tmp_path / "tiny_clip.pt")
    assert clip.source == "real" and clip.name == "Tiny-Eval-CLIP/tiny_clip.pt" and clip.image_size == 32
    x = _images(0, n=2, size=32)
    with torch.no_grad():
        expected = model.encode_image((x - clip.mean) / clip.std, normalize=True)
    torch.testing.assert_close(clip(x), expected)

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=32), add_pooling_layer=False).eval()
    vit.save_pretrained(tmp_path / "tiny_dino")
    dino = load_dino_embedder(tmp_path / "tiny_dino")
    assert isinstance(dino, ImageEmbedder) and dino.source == "real" and dino.family == "dino"
    y = _images(1, n=2, size=224)
    with torch.no_grad():
        cls = vit(pixel_values=(y - dino.mean) / dino.std).last_hidden_state[:, 0]
    torch.testing.assert_close(dino(y), torch.nn.functional.normalize(cls, dim=-1))
