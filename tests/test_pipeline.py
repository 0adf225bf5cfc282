"""AnyDoorPipeline on diffusers-style dummy components (64 px, 2 steps, output_type="pt")."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from anydoor import AnyDoorPipeline
from anydoor.data.boxes import expand_box, mask_box
from anydoor.models.denoiser import predict_noise
from anydoor.presets import sampling_scheduler
from anydoor.presets import tiny_pipeline


def get_dummy_inputs(seed: int = 0, steps: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    obj = np.full((48, 40, 3), 255, np.uint8)
    obj_mask = np.zeros((48, 40), bool)
    obj_mask[6:42, 8:34] = True
    obj[obj_mask] = rng.integers(0, 255, (obj_mask.sum(), 3), dtype=np.uint8)
    scene = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    scene_mask = np.zeros((80, 96), bool)
    scene_mask[20:50, 30:60] = True
    return dict(
        object_image=obj,
        object_mask=obj_mask,
        scene_image=scene,
        scene_mask=scene_mask,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )


@pytest.fixture(scope="module")
def pipe() -> AnyDoorPipeline:
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_output_shapes_and_ranges(pipe):
    out = pipe(**get_dummy_inputs())
    assert out.crops.shape == (1, 3, 64, 64)
    assert len(out.images) == 1 and out.images[0].shape == (3, 80, 96)
    for x in (out.crops, out.images[0]):
        assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()


def test_deterministic_for_a_seed_and_seed_dependent(pipe):
    a = pipe(**get_dummy_inputs(seed=0)).crops
    b = pipe(**get_dummy_inputs(seed=0)).crops
    inputs = get_dummy_inputs(seed=0)
    inputs["generator"] = torch.Generator().manual_seed(1)
    c = pipe(**inputs).crops
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_batch_of_two_equals_two_single_calls(pipe):
    one = get_dummy_inputs(seed=0)
    two = get_dummy_inputs(seed=1)
    singles = [pipe(**one).crops, pipe(**two).crops]
    batched = pipe(
        object_image=[one["object_image"], two["object_image"]],
        object_mask=[one["object_mask"], two["object_mask"]],
        scene_image=[one["scene_image"], two["scene_image"]],
        scene_mask=[one["scene_mask"], two["scene_mask"]],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        output_type="pt",
    ).crops
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-4)


def test_num_images_per_prompt_with_generator_list(pipe):
    inputs = get_dummy_inputs()
    inputs["num_images_per_prompt"] = 2
    inputs["generator"] = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(7)]
    out = pipe(**inputs)
    assert out.crops.shape == (2, 3, 64, 64) and len(out.images) == 2
    single = get_dummy_inputs()
    single["generator"] = torch.Generator().manual_seed(7)
    torch.testing.assert_close(out.crops[1:], pipe(**single).crops, atol=1e-5, rtol=1e-4)


def _prepared_tensors(pipe: AnyDoorPipeline, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference (1,3,224,224), hint (1,4,64,64)) of one pair of `get_dummy_inputs`."""
    sample = pipe.prepare_inputs(inputs["object_image"], inputs["object_mask"], inputs["scene_image"],
                                 scene_mask=inputs["scene_mask"])
    reference = torch.from_numpy(sample.reference).permute(2, 0, 1)[None]
    return reference, torch.from_numpy(sample.hint).permute(2, 0, 1)[None]


def _released_loop(pipe: AnyDoorPipeline, inputs: dict) -> torch.Tensor:
    """The released sampling loop, written independently: two guidance passes
    per step (conditional, then unconditional), DDIM, then the VAE decode."""
    reference, hint = _prepared_tensors(pipe, inputs)
    cond = pipe.id_extractor(reference)
    uncond = pipe.id_extractor(torch.zeros_like(reference))
    scheduler = sampling_scheduler(pipe.config.prediction_type)
    scheduler.set_timesteps(inputs["num_inference_steps"])
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    g = inputs["guidance_scale"]
    for t in scheduler.timesteps:
        e_c = predict_noise(pipe.unet, pipe.controlnet, latents, t, cond, hint)
        e_u = predict_noise(pipe.unet, pipe.controlnet, latents, t, uncond, hint)
        latents = scheduler.step(e_u + g * (e_c - e_u), t, latents, eta=0.0).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image.clamp(-1, 1) + 1) / 2


@torch.no_grad()
def test_batched_guidance_equals_two_separate_passes():
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    # The detail extractor's output convs start at zero: randomise them so
    # that its residuals (and hence the hint) really enter the comparison.
    g = torch.Generator().manual_seed(0)
    for conv in [*pipe.controlnet.controlnet_down_blocks, pipe.controlnet.controlnet_mid_block]:
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
    inputs = get_dummy_inputs()
    batched, separate = pipe(**inputs).crops, _released_loop(pipe, inputs)
    # Batch-size-dependent rounding, amplified by guidance 5; a real mistake
    # (e.g. swapped branches, a dropped hint) moves the crops by ~0.1 or more.
    torch.testing.assert_close(batched, separate, atol=1e-3, rtol=0)
    inputs["guidance_scale"] = 1.0
    assert (pipe(**inputs).crops - batched).abs().max() > 1e-2  # guidance (and the branch order) matters


def test_guidance_one_runs_the_conditional_branch_only(pipe):
    batch_sizes = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        batch_sizes.append(sample.shape[0])

    handle = pipe.controlnet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        inputs = get_dummy_inputs()
        inputs["batched_detail_features"] = False  # one detail-extractor call per step shows the rows
        inputs["guidance_scale"] = 1.0
        pipe(**inputs)
        inputs["guidance_scale"] = 5.0
        pipe(**inputs)
    finally:
        handle.remove()
    assert batch_sizes == [1, 1, 2, 2]


@pytest.mark.parametrize("output_type", ["pt", "latent"])
def test_generate_crops_is_the_call_on_prepared_tensors(pipe, output_type):
    """`__call__` = prepare inputs + `generate_crops` + paste back: the same
    crops (or latents) to the bit from the same tensors and seed."""
    inputs = get_dummy_inputs()
    inputs["output_type"] = output_type
    reference, hint = _prepared_tensors(pipe, inputs)
    crops = pipe.generate_crops(reference, hint, num_inference_steps=2, guidance_scale=5.0,
                                generator=torch.Generator().manual_seed(0), output_type=output_type)
    shape = (1, 3, 64, 64) if output_type == "pt" else (1, 4, 16, 16)
    assert crops.shape == shape and crops.dtype == torch.float32
    torch.testing.assert_close(crops, pipe(**inputs).crops, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hint=torch.zeros(1, 4, 32, 32)), r"hint must be a \(1, 4, 64, 64\) tensor"),
        (dict(hint=torch.zeros(2, 4, 64, 64)), r"hint must be a \(1, 4, 64, 64\) tensor"),
        (dict(reference=torch.zeros(1, 224, 224)), r"reference must be a \(B, 3, H, W\) tensor"),
        (dict(generator=[torch.Generator()] * 2), "generator is a list of 2 but reference has 1 rows"),
        (dict(output_type="pil"), "output_type='pil' is not one of pt, latent"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(detail_chunk_size=0), "detail_chunk_size"),
    ],
)
def test_generate_crops_bad_inputs(pipe, change, message):
    reference, hint = _prepared_tensors(pipe, get_dummy_inputs())
    arguments = dict(reference=reference, hint=hint, num_inference_steps=1) | change
    with pytest.raises(ValueError, match=message):
        pipe.generate_crops(arguments.pop("reference"), arguments.pop("hint"), **arguments)


def test_default_ddim_timesteps_are_the_released_ones(pipe):
    pipe.scheduler.set_timesteps(50)
    assert pipe.scheduler.timesteps.tolist() == list(range(981, 0, -20))


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.image_size == 64 and loaded.config.detail_map == "hf"
    assert type(loaded.id_extractor) is type(pipe.id_extractor)
    torch.testing.assert_close(loaded(**get_dummy_inputs()).crops, pipe(**get_dummy_inputs()).crops, rtol=0, atol=0)


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler])
def test_scheduler_swap_runs(pipe, scheduler_cls):
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler_cls.from_config(original.config)
        out = pipe(**get_dummy_inputs())
        assert torch.isfinite(out.crops).all()
    finally:
        pipe.scheduler = original


def test_a_scheduler_of_another_prediction_type_is_refused(pipe):
    original = pipe.scheduler
    other = "epsilon" if pipe.config.prediction_type == "v_prediction" else "v_prediction"
    try:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(original.config, prediction_type=other)
        with pytest.raises(ValueError, match=f"prediction_type='{other}' does not match the model's"):
            pipe(**get_dummy_inputs())
    finally:
        pipe.scheduler = original
    with pytest.raises(ValueError, match="does not match"):
        AnyDoorPipeline(**{**pipe.components, "scheduler": pipe.scheduler}, image_size=64, prediction_type=other)
    with pytest.raises(ValueError, match="prediction_type='sample' is not one of"):
        AnyDoorPipeline(**pipe.components, image_size=64, prediction_type="sample")


def test_every_pixel_outside_the_crop_box_equals_the_scene(pipe):
    inputs = get_dummy_inputs()
    inputs["output_type"] = "np"
    out = pipe(**inputs)
    composite = (out.images[0] * 255).round().astype(np.uint8)
    sample = pipe.prepare_inputs(inputs["object_image"], inputs["object_mask"], inputs["scene_image"],
                                 scene_mask=inputs["scene_mask"])
    x0, y0, x1, y1 = sample.paste.crop_box
    outside = np.ones(composite.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()
    np.testing.assert_array_equal(composite[outside], inputs["scene_image"][outside])
    assert not np.array_equal(composite[~outside], inputs["scene_image"][~outside])


def test_scene_box_and_rgba_object(pipe):
    inputs = get_dummy_inputs()
    rgba = np.dstack([inputs.pop("object_image"), inputs.pop("object_mask").astype(np.uint8) * 255])
    inputs.pop("scene_mask")
    out = pipe(object_image=rgba, scene_box=(30, 20, 60, 50), **inputs)
    assert out.crops.shape == (1, 3, 64, 64)


def test_shape_control_feeds_the_silhouette_and_needs_a_mask(pipe):
    inputs = get_dummy_inputs()
    silhouette = np.zeros_like(inputs["scene_mask"])
    silhouette[20:50, 40:50] = True  # a bar inside the box (30, 20, 60, 50)
    silhouette[30:40, 30:60] = True
    inputs["scene_mask"] = silhouette
    boxed = pipe.prepare_inputs(inputs["object_image"], inputs["object_mask"], inputs["scene_image"], scene_mask=silhouette)
    shaped = pipe.prepare_inputs(inputs["object_image"], inputs["object_mask"], inputs["scene_image"], scene_mask=silhouette,
                                 shape_control=True)
    assert shaped.paste == boxed.paste and 0 < shaped.hint[..., 3].sum() < boxed.hint[..., 3].sum()
    # The untrained detail extractor's zero convolutions hide the hint: open them.
    opened = copy.deepcopy(pipe)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        controlnet = opened.controlnet
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=generator))
    a = opened(**inputs, shape_control=True).crops
    b = opened(**{**inputs, "generator": torch.Generator().manual_seed(0)}).crops
    assert a.shape == b.shape and not torch.equal(a, b)  # the mask channel reaches the model
    inputs.pop("scene_mask")
    with pytest.raises(ValueError, match="pair 0: shape_control=True needs a scene_mask"):
        pipe(**inputs, scene_box=(30, 20, 60, 50), shape_control=True)


@pytest.mark.parametrize("id_extractor", ["dinov2", "dinov2-global", "clip"])
def test_each_id_extractor_end_to_end(id_extractor):
    pipe = tiny_pipeline(seed=0, id_extractor=id_extractor)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**get_dummy_inputs())
    assert out.crops.shape == (1, 3, 64, 64) and torch.isfinite(out.crops).all()


@pytest.mark.parametrize("detail_map", ["hf", "rgb", "noise", "shuffle", "none"])
def test_each_detail_map_end_to_end(detail_map):
    pipe = tiny_pipeline(seed=0, detail_map=detail_map)
    pipe.set_progress_bar_config(disable=True)
    a = pipe(**get_dummy_inputs()).crops
    b = pipe(**get_dummy_inputs()).crops
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # random maps draw from the generator


def test_random_detail_map_needs_a_generator():
    pipe = tiny_pipeline(seed=0, detail_map="noise")
    inputs = get_dummy_inputs()
    inputs["generator"] = None
    with pytest.raises(ValueError, match="torch.Generator"):
        pipe(**inputs)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(scene_box=(30, 20, 60, 50)), "exactly one of scene_mask or scene_box"),
        (dict(scene_mask=None), "exactly one of scene_mask or scene_box"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(generator=[torch.Generator()] * 3), "generator is a list of 3"),
        (dict(object_mask=None), "object_mask"),
        (dict(object_mask=np.zeros((48, 40), bool)), "empty"),
        (dict(scene_mask=np.ones((10, 10), bool)), "size"),
    ],
)
def test_bad_inputs_give_clear_errors(pipe, change, message):
    inputs = get_dummy_inputs()
    inputs.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**inputs)


def test_from_base_models_on_tiny_models_in_the_real_layout(tmp_path):
    """Tiny SD components saved with save_pretrained, a tiny Dinov2Model with a
    518-style grid, loaded back through the libraries' loaders."""
    from diffusers import DDPMScheduler
    from transformers import Dinov2Config, Dinov2Model

    from anydoor.presets import tiny_components, tiny_dinov2_config

    parts = tiny_components(seed=0)
    sd = tmp_path / "sd21-base"
    parts["unet"].save_pretrained(sd / "unet")
    parts["vae"].save_pretrained(sd / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(sd / "scheduler")
    torch.manual_seed(0)
    backbone = Dinov2Model(Dinov2Config(**{**tiny_dinov2_config(), "image_size": 518}))
    backbone.save_pretrained(tmp_path / "dinov2")

    pipe = AnyDoorPipeline.from_base_models(
        stable_diffusion=sd, id_backbone=tmp_path / "dinov2", conditioning_embedding_out_channels=(16, 32, 32)
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.image_size == 64
    assert torch.count_nonzero(pipe.controlnet.conv_in.weight) == 0
    out = pipe(**get_dummy_inputs())
    assert torch.isfinite(out.crops).all()


def test_from_base_models_refuses_v_prediction(tmp_path):
    from diffusers import DDPMScheduler

    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "sd21" / "scheduler")
    with pytest.raises(ValueError, match="SD2.1-base"):
        AnyDoorPipeline.from_base_models(stable_diffusion=tmp_path / "sd21", id_backbone=tmp_path / "x")


def test_from_base_models_fails_fast_when_nothing_is_there(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="stable-diffusion-2-1-base"):
        AnyDoorPipeline.from_base_models()
    assert time.monotonic() - start < 30


def test_compose_cli_writes_a_composite(pipe, tmp_path):
    import PIL.Image

    from anydoor.cli import main

    pipe.save_pretrained(tmp_path / "pipe")
    inputs = get_dummy_inputs()
    rgba = np.dstack([inputs["object_image"], inputs["object_mask"].astype(np.uint8) * 255])
    PIL.Image.fromarray(rgba).save(tmp_path / "object.png")
    PIL.Image.fromarray(inputs["scene_image"]).save(tmp_path / "scene.png")
    args = ["compose", "--pipeline", str(tmp_path / "pipe"), "--object", str(tmp_path / "object.png"),
            "--scene", str(tmp_path / "scene.png"), "--box", "30,20,60,50", "--steps", "2",
            "--out", str(tmp_path / "out.png")]
    assert main(args) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (96, 80)
    bad_box = [a if a != "30,20,60,50" else "1,2,3" for a in args]
    assert main(bad_box) == 2  # a one-line error, not a traceback


def test_compose_cli_reads_mask_files_as_users_have_them(pipe, tmp_path, capsys):
    # RGB (the released examples' scene masks), RGBA and palette mask files of the rectangle
    # (30, 20, 60, 50) place the object exactly as --box 30,20,60,50 does: same composite, same seed.
    import PIL.Image

    from anydoor.cli import main

    pipe.save_pretrained(tmp_path / "pipe")
    inputs = get_dummy_inputs()
    rgba = np.dstack([inputs["object_image"], inputs["object_mask"].astype(np.uint8) * 255])
    PIL.Image.fromarray(rgba).save(tmp_path / "object.png")
    PIL.Image.fromarray(inputs["object_image"]).save(tmp_path / "object_rgb.png")
    PIL.Image.fromarray(np.dstack([inputs["object_mask"].astype(np.uint8) * 255] * 3)).save(tmp_path / "object_mask.png")
    PIL.Image.fromarray(inputs["scene_image"]).save(tmp_path / "scene.png")
    rectangle = np.zeros((80, 96), np.uint8)
    rectangle[20:50, 30:60] = 1
    PIL.Image.fromarray(np.dstack([rectangle * 255] * 3)).save(tmp_path / "rgb.png")
    PIL.Image.fromarray(np.dstack([rectangle * 200] * 3 + [np.full((80, 96), 255, np.uint8)])).save(tmp_path / "rgba.png")
    palette = PIL.Image.frombytes("P", (96, 80), rectangle.tobytes())
    palette.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # index 1 drawn black: the index counts, not the colour
    palette.save(tmp_path / "palette.png")

    def compose(out, *where, obj=("--object", "object.png")):
        args = ["compose", "--pipeline", str(tmp_path / "pipe"), obj[0], str(tmp_path / obj[1]), *obj[2:],
                "--scene", str(tmp_path / "scene.png"), *where, "--steps", "1", "--out", str(tmp_path / out)]
        return main([a if not a.endswith(".png") or a.startswith("/") else str(tmp_path / a) for a in args])

    assert compose("box.png", "--box", "30,20,60,50") == 0
    expected = np.asarray(PIL.Image.open(tmp_path / "box.png"))
    rgb_object = ("--object", "object_rgb.png", "--object-mask", "object_mask.png")  # an RGB object mask file
    for name, obj in (("rgb.png", rgb_object), ("rgba.png", ("--object", "object.png")), ("palette.png", rgb_object)):
        assert compose(f"out_{name}", "--scene-mask", name, obj=obj) == 0
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / f"out_{name}")), expected)

    capsys.readouterr()
    PIL.Image.fromarray(np.full((80, 96), 255, np.uint8)).save(tmp_path / "white.png")
    assert compose("x.png", "--scene-mask", "white.png") == 2
    assert "white.png' has every pixel set" in capsys.readouterr().err
    PIL.Image.fromarray(np.zeros((80, 96), np.uint8)).save(tmp_path / "black.png")
    assert compose("x.png", "--scene-mask", "black.png") == 2
    assert "black.png' is empty: no pixel is set" in capsys.readouterr().err
    dots = np.zeros((80, 96), np.uint8)
    dots[5:8, 5:8] = 255
    PIL.Image.fromarray(dots).save(tmp_path / "dots.png")
    assert compose("x.png", "--scene-mask", "dots.png") == 2
    assert "dots.png' has only 9 pixel(s) set, fewer than 10" in capsys.readouterr().err
    assert compose("x.png", "--box", "30,20,60,50", obj=("--object", "object_rgb.png")) == 2
    assert "no alpha" in capsys.readouterr().err


def test_step_callback_sees_and_can_replace_the_latents(pipe):
    seen = []

    def record(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return tensors

    reference = pipe(**get_dummy_inputs()).crops
    crops = pipe(**get_dummy_inputs(), callback_on_step_end=record).crops
    assert [s[0] for s in seen] == [0, 1] and all(s[2] == (1, 4, 16, 16) for s in seen)
    torch.testing.assert_close(crops, reference, rtol=0, atol=0)  # returning them unchanged changes nothing

    zeroed = pipe(**get_dummy_inputs(), callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"] * 0}).crops
    assert (zeroed - reference).abs().max() > 1e-3  # what the callback returns is what the loop continues with
