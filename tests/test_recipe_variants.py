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
