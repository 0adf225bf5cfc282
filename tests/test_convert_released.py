"""Converting the released AnyDoor checkpoint (anydoor/convert_released.py, issue 9).

A tiny checkpoint in the released layout is written here: tiny diffusers
models with random weights renamed to LDM names by an inverse mapping written
in this file (checked against the released key set in
released_checkpoint_manifest.json), plus an original-naming DINOv2 with a
37x37 grid, schedule buffers, EMA entries and Lightning state. Converting it
must give back the same tensors, DINOv2 tokens equal to a hand-written
forward of the original weights, and a folder AnyDoorPipeline loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from anydoor.convert_released import (
    convert_released_checkpoint,
    dinov2_config_from_state_dict,
    load_checkpoint,
    map_released_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_NAME = "released_checkpoint_manifest.json"
MANIFEST = next(
    (p for p in (ROOT / "tests" / "data" / MANIFEST_NAME, ROOT.parent / "shared" / MANIFEST_NAME) if p.is_file()),
    None,
)

LAYERS = 1  # num_res_blocks of the tiny UNet
HINT_CHANNELS = (4, 8, 8, 16)
DINO_WIDTH, DINO_DEPTH, DINO_GRID, PATCH = 128, 2, 37, 14
SWIGLU = (int(4 * DINO_WIDTH * 2 / 3) + 7) // 8 * 8
CONTEXT = 64
SCALE_FACTOR = 0.5

TINY_YAML = {
    "model": {
        "target": "cldm.cldm.ControlLDM",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "image_size": 8,
            "scale_factor": SCALE_FACTOR,
            "unet_config": {"params": dict(
                image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1],
                num_res_blocks=LAYERS, channel_mult=[1, 2], num_head_channels=8, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=CONTEXT, legacy=False,
            )},
            "control_stage_config": {"params": dict(
                image_size=32, in_channels=4, hint_channels=4, model_channels=32, attention_resolutions=[1],
                num_res_blocks=LAYERS, channel_mult=[1, 2], num_head_channels=8, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=CONTEXT, legacy=False,
            )},
            "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": dict(
                double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1, 1],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0,
            )}},
        },
    }
}


# ------------------------------------------- diffusers -> LDM (inverse map)
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def _encoder_to_ldm(key: str, layers: int) -> str | None:
    """UNet/ControlNet encoder, middle block and time embedding; None if not one."""
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0."}
    for new, old in fixed.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * (layers + 1) + j}.0.{_resnet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * (layers + 1) + j}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    return None


def unet_to_ldm(state_dict: dict, layers: int) -> dict:
    with_attention = {int(k.split(".")[1]) for k in state_dict if re.match(r"up_blocks\.\d+\.attentions", k)}
    out = {}
    for key, value in state_dict.items():
        name = _encoder_to_ldm(key, layers)
        if name is None and key.startswith("conv_norm_out."):
            name = "out.0." + key[len("conv_norm_out."):]
        elif name is None and key.startswith("conv_out."):
            name = "out.2." + key[len("conv_out."):]
        elif name is None and (m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
            name = f"output_blocks.{int(m[1]) * (layers + 1) + int(m[2])}.0.{_resnet(m[3])}"
        elif name is None and (m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key)):
            name = f"output_blocks.{int(m[1]) * (layers + 1) + int(m[2])}.1.{m[3]}"
        elif name is None and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)):
            b = int(m[1])
            name = f"output_blocks.{b * (layers + 1) + layers}.{2 if b in with_attention else 1}.conv.{m[2]}"
        assert name is not None, key
        out["model.diffusion_model." + name] = value
    return out


def controlnet_to_ldm(state_dict: dict, layers: int) -> dict:
    blocks = len({k.split(".")[2] for k in state_dict if k.startswith("controlnet_cond_embedding.blocks.")})
    out = {}
    for key, value in state_dict.items():
        name = _encoder_to_ldm(key, layers)
        if name is None and (m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key)):
            name = f"zero_convs.{m[1]}.0.{m[2]}"
        elif name is None and key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.split(".", 1)[1]
        elif name is None and (m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key)):
            name = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif name is None and key.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + key.rsplit(".", 1)[1]
        elif name is None and key.startswith("controlnet_cond_embedding.conv_out."):
            name = f"input_hint_block.{2 * (blocks + 1)}." + key.rsplit(".", 1)[1]
        assert name is not None, key
        out["control_model." + name] = value
    return out


def vae_to_ldm(state_dict: dict) -> dict:
    levels = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("decoder.up_blocks."))
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state_dict.items():
        name = key
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":  # LDM's attention uses 1x1 convs
                value = value[:, :, None, None]
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            name = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + name] = value
    return out


# -------------------------------------------------- tiny released checkpoint
def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # no zero convs: every tensor must matter
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return module.eval()


def _original_dinov2(seed: int) -> dict:
    """DINOv2 ViT-g/14's original tensor names at a tiny width (fused qkv and w12)."""
    g = torch.Generator().manual_seed(seed)
    D, H = DINO_WIDTH, SWIGLU

    def rnd(*shape, scale=0.05):
        return torch.randn(shape, generator=g) * scale

    sd = {
        "cls_token": rnd(1, 1, D, scale=0.5),
        "pos_embed": rnd(1, 1 + DINO_GRID**2, D, scale=0.5),
        "mask_token": rnd(1, D),
        "patch_embed.proj.weight": rnd(D, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rnd(D),
        "norm.weight": 1 + rnd(D),
        "norm.bias": rnd(D),
    }
    for i in range(DINO_DEPTH):
        sd.update({
            f"blocks.{i}.norm1.weight": 1 + rnd(D), f"blocks.{i}.norm1.bias": rnd(D),
            f"blocks.{i}.attn.qkv.weight": rnd(3 * D, D, scale=0.2), f"blocks.{i}.attn.qkv.bias": rnd(3 * D),
            f"blocks.{i}.attn.proj.weight": rnd(D, D, scale=0.2), f"blocks.{i}.attn.proj.bias": rnd(D),
            f"blocks.{i}.ls1.gamma": 0.5 + rnd(D),
            f"blocks.{i}.norm2.weight": 1 + rnd(D), f"blocks.{i}.norm2.bias": rnd(D),
            f"blocks.{i}.mlp.w12.weight": rnd(2 * H, D, scale=0.2), f"blocks.{i}.mlp.w12.bias": rnd(2 * H),
            f"blocks.{i}.mlp.w3.weight": rnd(D, H, scale=0.2), f"blocks.{i}.mlp.w3.bias": rnd(D),
            f"blocks.{i}.ls2.gamma": 0.5 + rnd(D),
        })
    return {"cond_stage_model.model." + k: v for k, v in sd.items()}


def _schedule_buffers() -> dict:
    """LatentDiffusion's buffers: LDM's "linear" schedule is linear in sqrt(beta)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    variance = betas * (1 - prev) / (1 - alphas_cumprod)
    buffers = dict(
        betas=betas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=prev,
        sqrt_alphas_cumprod=alphas_cumprod.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
        log_one_minus_alphas_cumprod=(1 - alphas_cumprod).log(), sqrt_recip_alphas_cumprod=alphas_cumprod.rsqrt(),
        sqrt_recipm1_alphas_cumprod=(1 / alphas_cumprod - 1).sqrt(), posterior_variance=variance,
        posterior_log_variance_clipped=variance.clamp(min=1e-20).log(),
        posterior_mean_coef1=betas * prev.sqrt() / (1 - alphas_cumprod),
        posterior_mean_coef2=(1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
    )
    return {k: v.float() for k, v in buffers.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Source models, the released-layout state dict and the files written from it."""
    torch.manual_seed(0)
    unet = _randomise(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=LAYERS,
        attention_head_dim=(4, 8), cross_attention_dim=CONTEXT, use_linear_projection=True,
    ), 1)
    controlnet = _randomise(ControlNetModel(
        in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64),
        layers_per_block=LAYERS, attention_head_dim=(4, 8), cross_attention_dim=CONTEXT, use_linear_projection=True,
        conditioning_channels=4, conditioning_embedding_out_channels=HINT_CHANNELS,
    ), 2)
    vae = _randomise(AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32,) * 4, layers_per_block=1,
        latent_channels=4, sample_size=64,
    ), 3)
    g = torch.Generator().manual_seed(4)
    projector = {"cond_stage_model.projector.weight": torch.randn(CONTEXT, DINO_WIDTH, generator=g) * 0.05,
                 "cond_stage_model.projector.bias": torch.randn(CONTEXT, generator=g) * 0.05}
    state_dict = {
        **unet_to_ldm(unet.state_dict(), LAYERS),
        **controlnet_to_ldm(controlnet.state_dict(), LAYERS),
        **vae_to_ldm(vae.state_dict()),
        **_original_dinov2(5),
        **projector,
        **_schedule_buffers(),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(8687, dtype=torch.int32),
    }
    state_dict = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    lightning = {
        "epoch": 1,
        "global_step": 8687,
        "pytorch-lightning_version": "1.5.0",
        "state_dict": state_dict,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5, generator=g)}},
                              "param_groups": [{"lr": 1e-5, "params": [0]}]}],
        "lr_schedulers": [],
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": ""}},
    }
    folder = tmp_path_factory.mktemp("released")
    ckpt = folder / "epoch=1-step=8687.ckpt"
    torch.save(lightning, ckpt)
    config = folder / "anydoor_tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_YAML))
    return types.SimpleNamespace(
        unet=unet, controlnet=controlnet, vae=vae, state_dict=state_dict, ckpt=ckpt, config=config, folder=folder
    )


@pytest.fixture(scope="module")
def converted(tiny):
    """Converted through the CLI, loaded through `from_pretrained`."""
    from anydoor.cli import main
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    out = tiny.folder / "pipeline"
    argv = ["convert-released", "--checkpoint", str(tiny.ckpt), "--config", str(tiny.config), "--out", str(out)]
    assert main(argv) == 0
    return out, AnyDoorPipeline.from_pretrained(out)


# ------------------------------------------------------- reference forward
def _dinov2_reference(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """The original DINOv2 forward (fused qkv, SwiGLU w12/w3, layer scale, the
    original bicubic re-gridding at 224 px) and the projector, from the
    original tensors."""
    w = {k.split("cond_stage_model.", 1)[1]: v for k, v in sd.items() if k.startswith("cond_stage_model.")}
    D, heads, B = DINO_WIDTH, DINO_WIDTH // 64, images.shape[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = F.conv2d((images - mean) / std, w["model.patch_embed.proj.weight"], w["model.patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([w["model.cls_token"].expand(B, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = w["model.pos_embed"]
    grid = pos[:, 1:].reshape(1, DINO_GRID, DINO_GRID, D).permute(0, 3, 1, 2)
    side = 224 // PATCH + 0.1  # DINOv2's interpolate_pos_encoding
    grid = F.interpolate(grid, scale_factor=(side / DINO_GRID, side / DINO_GRID), mode="bicubic")
    x = x + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, D)], dim=1)
    for i in range(DINO_DEPTH):
        p = f"model.blocks.{i}."
        h = F.layer_norm(x, (D,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, -1, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // heads), dim=-1) @ v
        attention = F.linear(attention.transpose(1, 2).reshape(B, -1, D), w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + w[p + "ls1.gamma"] * attention
        h = F.layer_norm(x, (D,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        x1, x2 = F.linear(h, w[p + "mlp.w12.weight"], w[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        x = x + w[p + "ls2.gamma"] * F.linear(F.silu(x1) * x2, w[p + "mlp.w3.weight"], w[p + "mlp.w3.bias"])
    x = F.layer_norm(x, (D,), w["model.norm.weight"], w["model.norm.bias"], eps=1e-6)
    return F.linear(x, w["projector.weight"], w["projector.bias"])


# ----------------------------------------------------------------- tests
def test_converted_tensors_equal_the_sources(tiny, converted):
    _, pipe = converted
    for name, source in (("unet", tiny.unet), ("vae", tiny.vae)):
        got = getattr(pipe, name).state_dict()
        want = source.state_dict()
        assert set(got) == set(want), name
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{name}.{key}")
    got, want = pipe.controlnet.state_dict(), tiny.controlnet.state_dict()
    assert set(got) == set(want)
    for key in want:
        if key.startswith("conv_in."):
            # the released input_blocks.0.0 (non-zero here) is discarded (DESIGN.md 1c)
            assert want[key].abs().sum() > 0 and torch.count_nonzero(got[key]) == 0, key
        else:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"controlnet.{key}")
    assert tuple(pipe.controlnet.config.conditioning_embedding_out_channels) == HINT_CHANNELS


def test_configs_follow_the_yaml(converted):
    _, pipe = converted
    assert pipe.config.image_size == 64  # latent 8 x VAE factor 8
    assert pipe.vae.config.scaling_factor == SCALE_FACTOR
    assert pipe.unet.config.cross_attention_dim == CONTEXT
    assert tuple(pipe.unet.config.attention_head_dim) == (4, 8)  # 8-wide heads at widths 32, 64
    assert pipe.config.detail_map == "hf" and pipe.config.remove_background and pipe.config.control_scale == 1.0
    scheduler = pipe.scheduler
    scheduler.set_timesteps(50)
    assert type(scheduler).__name__ == "DDIMScheduler"
    assert scheduler.timesteps[:3].tolist() == [981, 961, 941] and scheduler.timesteps[-1] == 1


def test_vae_decode_equals_the_source_vae(tiny, converted):
    _, pipe = converted
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pipe.vae.decode(z).sample, tiny.vae.decode(z).sample, rtol=0, atol=0)


def test_dinov2_tokens_match_the_original_forward(tiny, converted):
    _, pipe = converted
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = pipe.id_extractor(images)
        reference = _dinov2_reference(tiny.state_dict, images)
    assert tokens.shape == (2, 257, CONTEXT)
    torch.testing.assert_close(tokens, reference, rtol=1e-4, atol=1e-5)
    # transformers' own resize of the 37x37 grid gives other tokens: the stored
    # table must be the original rule's (DESIGN.md 1c)
    assert pipe.id_extractor.backbone.embeddings.position_embeddings.shape == (1, 257, DINO_WIDTH)


def test_conversion_record(tiny, converted):
    out, _ = converted
    record = json.loads((out / "conversion.json").read_text())
    assert record["source"]["file"] == tiny.ckpt.name
    assert record["source"]["size_bytes"] == tiny.ckpt.stat().st_size
    ignored = {k for k in tiny.state_dict if k.startswith(("model_ema.", "control_model.input_blocks.0.0."))}
    ignored |= set(_schedule_buffers())
    kept = sorted(set(tiny.state_dict) - ignored)
    digest = hashlib.sha256()
    for key in kept:
        digest.update(tiny.state_dict[key].contiguous().numpy().tobytes())
    assert record["source"]["kept_tensors"] == len(kept)
    assert record["source"]["kept_sha256"] == digest.hexdigest()
    assert {k: v["count"] for k, v in record["ignored"].items()} == {
        "schedule_buffers": 12, "control_model.input_blocks.0.0": 2, "model_ema": 2, "lightning_state": 6,
    }
    assert "optimizer_states" in record["ignored"]["lightning_state"]["keys"]
    assert set(record["versions"]) >= {"diffusers", "transformers", "torch"}
    assert not any(p.name.startswith(".pipeline.partial") for p in tiny.folder.iterdir())


def test_converted_pipeline_runs(tiny, converted):
    _, pipe = converted
    rng = torch.Generator().manual_seed(0)
    obj = (torch.rand(40, 30, 3, generator=rng) * 255).to(torch.uint8).numpy()
    mask = torch.zeros(40, 30, dtype=torch.bool)
    mask[5:35, 5:25] = True
    scene = (torch.rand(80, 90, 3, generator=rng) * 255).to(torch.uint8).numpy()
    result = pipe(obj, mask.numpy(), scene, scene_box=(20, 20, 60, 60), num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np")
    assert result.crops.shape == (1, 64, 64, 3) and result.images[0].shape == (80, 90, 3)


@pytest.mark.skipif(MANIFEST is None, reason=f"{MANIFEST_NAME} not found")
def test_inverse_mapping_reproduces_the_released_layout():
    """The LDM names this test writes are the released checkpoint's (so the
    tiny round trip exercises the real layout)."""
    from accelerate import init_empty_weights

    from anydoor.models.detail_extractor import build_detail_extractor
    from anydoor.presets import full_size_configs

    manifest = json.loads(MANIFEST.read_text())["tensors"]
    configs = full_size_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel(**configs["unet"])
        controlnet = build_detail_extractor(unet, **configs["detail_extractor"])
        vae = AutoencoderKL(**configs["vae"])
    ours = {**unet_to_ldm(unet.state_dict(), 2), **controlnet_to_ldm(controlnet.state_dict(), 2),
            **vae_to_ldm(vae.state_dict())}
    released = {k: v for k, v in manifest.items() if k.startswith(("model.diffusion", "control_model", "first_stage"))}
    assert {k: list(v.shape) for k, v in ours.items()} == released


@pytest.mark.skipif(MANIFEST is None, reason=f"{MANIFEST_NAME} not found")
def test_full_released_key_set_is_accounted_for():
    from anydoor.presets import full_size_configs

    manifest = json.loads(MANIFEST.read_text())["tensors"]
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    plan = map_released_state_dict(state_dict)
    ignored = {group: len(keys) for group, keys in plan.ignored.items()}
    assert ignored == {"schedule_buffers": 12, "control_model.input_blocks.0.0": 2, "model_ema": 0}
    assert len(plan.kept) + 14 == len(manifest) == 1855
    assert plan.image_size == 512
    assert {k: len(v) for k, v in plan.state_dicts.items()} == {
        k: len(m.state_dict()) for k, m in plan.modules.items()
    }
    configs = full_size_configs()
    for key, value in configs["dinov2"].items():
        assert plan.modules["id_extractor"].config.backbone_config[key] == value, key
    for key in ("block_out_channels", "layers_per_block", "attention_head_dim", "down_block_types", "up_block_types",
                "cross_attention_dim", "use_linear_projection", "sample_size"):
        got, want = plan.modules["unet"].config[key], configs["unet"][key]
        assert (tuple(got) if isinstance(want, tuple) else got) == want, key
    assert plan.modules["vae"].config.scaling_factor == 0.18215
    assert tuple(plan.modules["controlnet"].config.conditioning_embedding_out_channels) == (16, 32, 96, 256)


def test_dinov2_config_from_shapes():
    config = dinov2_config_from_state_dict(_original_dinov2(0))
    assert config["hidden_size"] == DINO_WIDTH and config["num_hidden_layers"] == DINO_DEPTH
    assert config["num_attention_heads"] == 2 and config["patch_size"] == PATCH and config["mlp_ratio"] == 4
    sd = _original_dinov2(0)
    sd["cond_stage_model.model.blocks.0.mlp.w12.weight"] = torch.zeros(2 * 300, DINO_WIDTH)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.w12\.weight .*SwiGLU width of 300"):
        dinov2_config_from_state_dict(sd)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update(bogus=torch.zeros(1)), r"(?s)no part of AnyDoor.*'bogus'"),
        (lambda sd: sd.update({"model.diffusion_model.extra.weight": torch.zeros(1)}),
         r"'model\.diffusion_model\.extra\.weight' is not used"),
        (lambda sd: sd.pop("model.diffusion_model.out.2.weight"), r"no tensor for unet\.conv_out\.weight"),
        (lambda sd: sd.pop("cond_stage_model.model.blocks.1.ls2.gamma"),
         r"no tensor for id_extractor\.backbone\.encoder\.layer\.1\.layer_scale2\.lambda1"),
        (lambda sd: sd.update({"first_stage_model.decoder.conv_in.weight": torch.zeros(32, 4, 1, 1)}),
         r"first_stage_model\.decoder\.conv_in\.weight \(-> vae\.decoder\.conv_in\.weight\) has shape "
         r"\(32, 4, 1, 1\) in the checkpoint, the config gives \(32, 4, 3, 3\)"),
        (lambda sd: sd.update(betas=sd["betas"] * 2), r"'betas' differ"),
    ],
    ids=["unknown", "leftover", "missing", "missing-dinov2", "shape", "schedule"],
)
def test_mapping_errors_name_the_tensor(tiny, edit, message):
    state_dict = dict(tiny.state_dict)
    edit(state_dict)
    with pytest.raises(ValueError, match=message):
        map_released_state_dict(state_dict, tiny.config)


def test_released_defaults_do_not_fit_a_tiny_checkpoint(tiny):
    with pytest.raises(ValueError, match=r"(?s)does not match the config \(released defaults\); tensors \d+ with "
                       r"another shape.*model\.diffusion_model\.input_blocks\.0\.0\.weight \(-> unet\.conv_in\.weight\) "
                       r"has shape \(32, 4, 3, 3\) in the checkpoint, the config gives \(320, 4, 3, 3\)"):
        map_released_state_dict(tiny.state_dict)


def test_bad_files_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for path in (text, png):
        with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
            load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_checkpoint(listing)


class Hyperparameters:
    """Stands for the Python objects a Lightning file may pickle."""

    def __init__(self, lr):
        self.lr = lr


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {"betas": torch.zeros(3)}, "hyper_parameters": Hyperparameters(1e-5)}, path)
    with pytest.raises(ValueError, match=r"Hyperparameters.*trust_checkpoint=True"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust_checkpoint=True)
    assert set(loaded.state_dict) == {"betas"} and loaded.lightning_keys == ["hyper_parameters"]
    assert any("trust_checkpoint" in note for note in loaded.notes)


def test_trusted_load_survives_classes_that_cannot_be_imported(tmp_path):
    module = types.ModuleType("anydoor_vanished_module")
    exec("class Callback:\n    def __init__(self):\n        self.state = 3\n", module.__dict__)
    sys.modules[module.__name__] = module
    path = tmp_path / "vanished.ckpt"
    try:
        torch.save({"state_dict": {"betas": torch.ones(2)}, "callbacks": {module.Callback: module.Callback()}}, path)
    finally:
        del sys.modules[module.__name__]
    loaded = load_checkpoint(path, trust_checkpoint=True)
    torch.testing.assert_close(loaded.state_dict["betas"], torch.ones(2))
    assert any("anydoor_vanished_module.Callback" in note for note in loaded.notes)


def test_legacy_bare_state_dict_loads_without_mmap(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"betas": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert loaded.format == "legacy" and loaded.lightning_keys == []
    torch.testing.assert_close(loaded.state_dict["betas"], torch.arange(3.0))
    assert any("not memory-mapped" in note for note in loaded.notes)


def test_output_folder_must_be_new_or_empty(tiny, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        convert_released_checkpoint(tiny.ckpt, tmp_path, config=tiny.config)


def test_cli_reports_errors_as_one_line(tmp_path, capsys):
    from anydoor.cli import main

    bad = tmp_path / "bad.ckpt"
    bad.write_text("hello")
    assert main(["convert-released", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
