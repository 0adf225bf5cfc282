"""The recipe-variant harness (`benchmarks/recipe_variants.py`): its patches do what
they say inside their context and leave the library unchanged afterwards."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from anydoor import presets
from anydoor.training import loop

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_variants.py"
_spec = importlib.util.spec_from_file_location("recipe_variants", _PATH)
recipe_variants = importlib.util.module_from_spec(_spec)
sys.modules["recipe_variants"] = recipe_variants  # dataclasses look their module up there
_spec.loader.exec_module(recipe_variants)


def _hint_conv_out(parts: dict) -> torch.Tensor:
    return parts["controlnet"].controlnet_cond_embedding.conv_out.weight


def test_hint_embedding_init_is_scoped():
    assert torch.count_nonzero(_hint_conv_out(presets.tiny_components(seed=0))) == 0
    with recipe_variants.hint_embedding_init():
        weight = _hint_conv_out(presets.tiny_components(seed=0))
    assert torch.count_nonzero(weight) == weight.numel()
    assert torch.count_nonzero(_hint_conv_out(presets.tiny_components(seed=0))) == 0


def test_zero_terminal_snr_is_scoped():
    before = presets.training_scheduler("v_prediction").alphas_cumprod[-1]
    with recipe_variants.zero_terminal_snr():
        assert presets.training_scheduler("v_prediction").alphas_cumprod[-1] < 1e-6
        ddim = presets.sampling_scheduler("v_prediction")
        assert ddim.config.timestep_spacing == "trailing"
        ddim.set_timesteps(50)
        assert int(ddim.timesteps[0]) == 999
    assert presets.training_scheduler("v_prediction").alphas_cumprod[-1] == pytest.approx(float(before))
    assert before > 1e-3
    assert presets.sampling_scheduler().config.timestep_spacing == "leading"


def test_lr_multiplier_puts_zero_convs_in_a_faster_group():
    parts = presets.tiny_components(seed=0)
    real_adamw = torch.optim.AdamW
    with recipe_variants.lr_multiplier(recipe_variants.ZERO_CONV_PREFIXES, 10.0):
        trainable = loop.set_trainable(parts["unet"], parts["controlnet"], parts["id_extractor"], "full_unet")
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-3)
    assert torch.optim.AdamW is real_adamw and loop.set_trainable is not None
    slow, fast = optimizer.param_groups
    assert (slow["lr"], fast["lr"]) == (pytest.approx(1e-3), pytest.approx(1e-2))
    expected = {id(p) for n, p in trainable.items() if n.startswith(recipe_variants.ZERO_CONV_PREFIXES)}
    assert expected and {id(p) for p in fast["params"]} == expected
    assert len(slow["params"]) + len(fast["params"]) == len(trainable)


def test_unknown_variant_is_named(capsys):
    with pytest.raises(SystemExit):
        recipe_variants.main(["no-such-variant"])
    assert "no-such-variant" in capsys.readouterr().err


def test_sampling_variants_name_a_trained_variant():
    for name, variant in recipe_variants.VARIANTS.items():
        if variant.model is not None:
            assert variant.model in recipe_variants.VARIANTS and recipe_variants.VARIANTS[variant.model].model is None, name


def test_x0_at_step_returns_that_steps_prediction_and_is_scoped():
    from diffusers import DDIMScheduler

    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 4, 4, 4, generator=generator)
    outputs = [torch.randn(2, 4, 4, 4, generator=generator) for _ in range(5)]

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        scheduler = presets.sampling_scheduler("v_prediction")
        scheduler.set_timesteps(5)
        latents, predicted = start, []
        for output, t in zip(outputs, scheduler.timesteps):
            latents, x0 = scheduler.step(output, t, latents, return_dict=False)
            predicted.append(x0)
        return latents, predicted

    real_step = DDIMScheduler.step
    sample, predicted = run()
    with recipe_variants.x0_at_step(2):
        patched, _ = run()
    torch.testing.assert_close(patched, predicted[2])
    assert not torch.allclose(predicted[2], sample)
    real_sample, _ = run()  # undone afterwards
    torch.testing.assert_close(real_sample, sample)
    assert DDIMScheduler.step is real_step


def test_start_from_loads_the_warm_unet_and_detail_extractor(tmp_path):
    from anydoor.training.config import load_config

    warm = presets.tiny_pipeline(seed=1)
    warm.save_pretrained(tmp_path / "warm")
    config = load_config(str(_PATH.parents[1] / "configs" / "train_tiny.yaml"), ["model.vae=null", "model.base_unet=null"])
    real_build = loop._build_components
    with recipe_variants.start_from(tmp_path / "warm"):
        parts = loop._build_components(config)
    assert loop._build_components is real_build
    for name in ("unet", "controlnet"):
        for key, value in getattr(warm, name).state_dict().items():
            torch.testing.assert_close(parts[name].state_dict()[key], value, msg=f"{name}.{key}")
    # The ID extractor (and its projector) stay the config's own, untouched by the warm start.
    fresh = real_build(config)
    projector = "projector.weight"
    torch.testing.assert_close(parts["id_extractor"].state_dict()[projector], fresh["id_extractor"].state_dict()[projector])
    assert not torch.allclose(warm.id_extractor.state_dict()[projector], fresh["id_extractor"].state_dict()[projector])


def test_warm_start_variants_start_from_a_warm_start():
    warm = {name: v for name, v in recipe_variants.VARIANTS.items() if v.warm_start_steps}
    assert warm and all(v.warm_start_steps > 0 and v.model is None for v in warm.values())
    assert "cond_dropout=1.0" in recipe_variants.WARM_START_OVERRIDES


def test_shared_warm_start_folders_are_not_variant_folders(tmp_path):
    # A variant's model lives in OUT/<variant>; a warm start kept there would be taken for that model.
    for name, variant in recipe_variants.VARIANTS.items():
        if variant.warm_start_steps:
            done = tmp_path / f"shared-warm-start-{variant.warm_start_steps}" / "pipeline" / "model_index.json"
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("{}")
            found = recipe_variants.warm_start(variant.warm_start_steps, tmp_path)  # reused, not trained
            assert found == done.parent
            assert found.parent.name not in recipe_variants.VARIANTS, name
