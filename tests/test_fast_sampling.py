"""Fast sampling paths of AnyDoorPipeline (issue 10) against the reference paths.

Every fast path must give the reference result up to float rounding on the
tiny pipeline: batched vs sequential guidance, detail features batched over
all steps vs one detail-extractor call per step (also chunked, also with
multistep schedulers and a scheduler that repeats timesteps), channels_last,
torch.compile, VAE slicing. dtype moves keep every component on one dtype.
Model CPU offload runs only where an accelerator exists. No timing asserts.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from anydoor.models.denoiser import detail_residuals, detail_residuals_for_timesteps
from anydoor.presets import tiny_pipeline
from tests.test_pipeline import get_dummy_inputs

# float32 convs and matmuls round differently at different batch sizes and
# memory formats: the crops (in [0, 1]) then differ by up to about 3e-5 after
# 3 guided steps on these random weights, the residuals (up to about 3) by
# about 3e-6. A real error (a wrong timestep, row or branch) moves the crops
# by 0.1 or more.
ATOL, RTOL = 1e-4, 0.0
RESIDUAL_ATOL, RESIDUAL_RTOL = 1e-5, 1e-5


def _pipeline():
    """The tiny pipeline with random zero-initialised convs in the detail
    extractor (the hint embedding's last conv and the output convs): untrained,
    every residual would be zero or ignore the hint, which would make any
    comparison of the detail paths vacuous."""
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        controlnet = pipe.controlnet
        zero_initialised = [
            controlnet.controlnet_cond_embedding.conv_out,
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
        ]
        for conv in zero_initialised:
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return _pipeline()


def test_detail_residuals_matter_here(pipe):
    assert (_crops(pipe, control_scale=1.0) - _crops(pipe, control_scale=0.0)).abs().max() > 1e-2


def _crops(pipe, steps: int = 3, **options) -> torch.Tensor:
    inputs = get_dummy_inputs(steps=steps)
    inputs.update(options)
    return pipe(**inputs).crops


def _record_detail_batches(pipe):
    """Batch sizes of the detail extractor's calls, in order."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        sizes.append((args[0] if args else kwargs["sample"]).shape[0])

    return sizes, pipe.controlnet.register_forward_pre_hook(hook, with_kwargs=True)


# ----------------------------------------------------------- denoiser level
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
@pytest.mark.parametrize("timesteps", [torch.tensor([981, 501, 21]), torch.tensor([999.0, 523.25, 0.5])])
def test_residuals_for_all_timesteps_equal_one_call_per_timestep(pipe, chunk_size, timesteps):
    generator = torch.Generator().manual_seed(0)
    hint = torch.rand((2, 4, 64, 64), generator=generator) * 2 - 1
    tokens = torch.randn((2, 5, 64), generator=generator)
    scales = [0.5 + 0.1 * k for k in range(5)]  # one per output: the scale must follow its output
    with torch.no_grad():
        down, mid = detail_residuals_for_timesteps(
            pipe.controlnet, hint, timesteps, tokens, control_scale=scales, chunk_size=chunk_size
        )
        for n, t in enumerate(timesteps):
            ref_down, ref_mid = detail_residuals(pipe.controlnet, hint, t, tokens, control_scale=scales)
            assert len(down) == len(ref_down) == 4
            for stacked, ref in zip([*down, mid], [*ref_down, ref_mid]):
                assert stacked.shape == (3, *ref.shape)
                torch.testing.assert_close(stacked[n], ref, atol=RESIDUAL_ATOL, rtol=RESIDUAL_RTOL)
    assert mid.abs().max() > 0  # the zero-initialised output convs would hide a wrong row order
    # the two inputs differ, so swapped rows would show
    assert (down[0][0, 0] - down[0][0, 1]).abs().max() > 1e-3


def test_residuals_for_timesteps_bad_arguments(pipe):
    hint, tokens = torch.zeros((1, 4, 64, 64)), torch.zeros((1, 5, 64))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        detail_residuals_for_timesteps(pipe.controlnet, hint, torch.tensor([1, 2]), tokens, chunk_size=0)
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-D tensor"):
        detail_residuals_for_timesteps(pipe.controlnet, hint, torch.tensor(5), tokens)
    with pytest.raises(ValueError, match="id_tokens has 2 rows but hint has 1"):
        detail_residuals_for_timesteps(pipe.controlnet, hint, torch.tensor([1]), torch.zeros((2, 5, 64)))


# ---------------------------------------------------------- pipeline level
def test_reference_path_is_sequential_guidance_with_per_step_features(pipe):
    reference = _crops(pipe, sequential_guidance=True, batched_detail_features=False)
    for options in (
        dict(batched_detail_features=False),  # batched guidance (the default)
        dict(batched_detail_features=True),  # + features of all steps in one pass
        dict(batched_detail_features=True, detail_chunk_size=2),  # in passes of 2 timesteps then 1
        dict(sequential_guidance=True, batched_detail_features=True),
    ):
        torch.testing.assert_close(_crops(pipe, **options), reference, atol=ATOL, rtol=RTOL, msg=str(options))


def test_batched_features_without_guidance(pipe):
    reference = _crops(pipe, guidance_scale=1.0, batched_detail_features=False)
    torch.testing.assert_close(_crops(pipe, guidance_scale=1.0, batched_detail_features=True), reference,
                               atol=ATOL, rtol=RTOL)


def test_detail_extractor_calls_per_mode(pipe):
    """Per step: one call of both branches per step. Batched: one call of
    steps x branches rows, or chunks of timesteps. Automatic on a CPU: a
    one-row probe, then batched (the tiny residuals fit the host budget)."""
    expected = {
        (False, None): [2, 2, 2],
        (None, None): [1, 6],
        (True, None): [6],
        (True, 2): [4, 2],
    }
    for (batched, chunk), sizes_expected in expected.items():
        sizes, handle = _record_detail_batches(pipe)
        try:
            _crops(pipe, batched_detail_features=batched, detail_chunk_size=chunk)
        finally:
            handle.remove()
        assert sizes == sizes_expected, (batched, chunk)


def test_time_embedding_sees_the_same_timesteps_in_both_paths(pipe):
    """The detail extractor's time projection must get the loop's exact
    timestep values and dtype whether called per step or batched."""
    seen: dict[bool, list] = {}
    for batched in (False, True):
        values: list = []
        handle = pipe.controlnet.time_proj.register_forward_pre_hook(
            lambda module, args: values.append((args[0].dtype, sorted(set(args[0].tolist()))))
        )
        try:
            _crops(pipe, batched_detail_features=batched)
        finally:
            handle.remove()
        seen[batched] = values
    per_step = [v for _, vs in seen[False] for v in vs]
    assert [dtype for dtype, _ in seen[True]] == [torch.int64]
    assert {dtype for dtype, _ in seen[False]} == {torch.int64}
    pipe.scheduler.set_timesteps(3)
    assert sorted(per_step) == seen[True][0][1] == sorted(pipe.scheduler.timesteps.tolist())


@pytest.mark.parametrize(
    "scheduler_cls", [DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler]
)
def test_scheduler_swap_batched_features_equal_per_step(pipe, scheduler_cls):
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler_cls.from_config(original.config)
        reference = _crops(pipe, sequential_guidance=True, batched_detail_features=False)
        batched = _crops(pipe, batched_detail_features=True)
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(batched, reference, atol=ATOL, rtol=RTOL)
    assert (reference - _crops(pipe)).abs().max() > 1e-4  # it really sampled with another scheduler


def test_repeated_timesteps_get_their_features_once(pipe):
    """Heun evaluates each timestep twice (float timesteps): the batched pass
    computes each distinct timestep once and gives the per-step result."""
    original = pipe.scheduler
    try:
        pipe.scheduler = HeunDiscreteScheduler.from_config(original.config)
        pipe.scheduler.set_timesteps(3)
        distinct = pipe.scheduler.timesteps.unique().numel()
        assert distinct < len(pipe.scheduler.timesteps)
        reference = _crops(pipe, batched_detail_features=False)
        sizes, handle = _record_detail_batches(pipe)
        try:
            batched = _crops(pipe, batched_detail_features=True)
        finally:
            handle.remove()
    finally:
        pipe.scheduler = original
    assert sizes == [2 * distinct]
    torch.testing.assert_close(batched, reference, atol=ATOL, rtol=RTOL)


def test_channels_last_equals_contiguous(pipe):
    reference = _crops(pipe)
    try:
        pipe.set_memory_format(torch.channels_last)
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert pipe.controlnet.controlnet_cond_embedding.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        channels_last = _crops(pipe)
        channels_last_batched = _crops(pipe, batched_detail_features=True)
    finally:
        pipe.set_memory_format(torch.contiguous_format)
    assert pipe.unet.conv_in.weight.is_contiguous()
    torch.testing.assert_close(channels_last, reference, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(channels_last_batched, reference, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="memory_format"):
        pipe.set_memory_format(torch.preserve_format)


def test_vae_slicing_equals_one_batch(pipe):
    inputs = get_dummy_inputs(steps=2)
    inputs.update(num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    reference = pipe(**inputs).crops
    pipe.vae.enable_slicing()
    try:
        inputs["generator"] = [torch.Generator().manual_seed(s) for s in (0, 1)]
        sliced = pipe(**inputs).crops
    finally:
        pipe.vae.disable_slicing()
    torch.testing.assert_close(sliced, reference, atol=ATOL, rtol=RTOL)


def test_compiled_denoiser_equals_eager():
    """torch.compile through dynamo (the "eager" backend: no C++ toolchain or
    kernel compilation needed here); the modules stay registered components."""
    pipe = _pipeline()
    reference = _crops(pipe, steps=2)
    pipe.compile_denoiser(backend="eager")
    assert pipe.unet._compiled_call_impl is not None and pipe.controlnet._compiled_call_impl is not None
    assert pipe.components["unet"] is pipe.unet
    torch.testing.assert_close(_crops(pipe, steps=2), reference, atol=ATOL, rtol=RTOL)


def test_dtype_move_puts_every_component_on_one_dtype():
    pipe = _pipeline()
    reference = _crops(pipe, steps=2)
    pipe.to("cpu", torch.bfloat16)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            tensors = [*module.parameters(), *module.buffers()]
            assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}, name
            assert {t.device.type for t in tensors} == {"cpu"}, name
    assert pipe.id_extractor.dtype == pipe.unet.dtype == torch.bfloat16
    low = _crops(pipe, steps=2)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # bf16 keeps about 3 significant digits: close to the float32 result, not equal
    assert (low - reference).abs().mean() < 0.02
    latents = _crops(pipe, steps=2, output_type="latent")
    assert latents.dtype == torch.float32  # the scheduler's state stays float32


def test_bad_fast_path_options(pipe):
    for options, error, message in (
        (dict(detail_chunk_size=0), ValueError, "detail_chunk_size must be a positive integer"),
        (dict(detail_chunk_size=True), ValueError, "detail_chunk_size"),
        (dict(batched_detail_features="yes"), TypeError, "batched_detail_features must be True, False or None"),
        (dict(sequential_guidance=1), TypeError, "sequential_guidance must be a bool"),
    ):
        with pytest.raises(error, match=message):
            _crops(pipe, steps=1, **options)


def test_automatic_chunk_size_from_free_memory(pipe, monkeypatch):
    """The CUDA rule, with the memory queries replaced: residuals of one tiny
    row are 32*16*16*2 + 32*8*8 + 64*8*8*2 floats (conv_in and block 0 at
    16x16, the downsampler at 8x8, block 1 and the middle at 8x8)."""
    row_bytes = 4 * (32 * 16 * 16 * 2 + 32 * 8 * 8 + 64 * 8 * 8 * 2)
    rows, steps = 2, 50
    hint, tokens = torch.zeros((rows, 4, 64, 64)), torch.zeros((rows, 5, 64))
    timesteps = torch.arange(steps)

    def chunk_for(free_bytes: int):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 2 * free_bytes))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
        with torch.no_grad():
            return pipe._detail_chunk_size_for_memory(hint, tokens, timesteps, 1.0, torch.device("cuda"))

    stored = steps * rows * row_bytes  # every step's residuals
    pass_bytes = 4 * rows * row_bytes  # one timestep's pass, activation factor 4
    assert chunk_for(2 * (stored + 10 * pass_bytes)) == 10  # half the free memory is the budget
    assert chunk_for(2 * (stored + 1000 * pass_bytes)) == steps
    assert chunk_for(2 * stored) is None  # no room for a pass: one call per step instead


def test_automatic_mode_off_cuda_follows_the_host_budget(pipe, monkeypatch):
    """Off CUDA the automatic mode batches when the stored residuals of every
    distinct timestep plus one pass fit in `_DETAIL_HOST_MEMORY_BUDGET`: the
    tiny pipeline fits in the default budget, in two passes under a budget
    that holds two timesteps' passes, and falls back to per step under a
    budget that holds nothing. Every choice gives the per-step result."""
    import anydoor.pipeline_anydoor as module

    row_bytes = 4 * (32 * 16 * 16 * 2 + 32 * 8 * 8 + 64 * 8 * 8 * 2)  # as in the CUDA test above
    rows, steps = 2, 3  # both guidance branches, 3 DDIM steps
    stored, pass_bytes = steps * rows * row_bytes, 4 * rows * row_bytes
    assert stored + steps * pass_bytes < module._DETAIL_HOST_MEMORY_BUDGET
    reference = _crops(pipe, batched_detail_features=False)
    for budget, calls in (
        (module._DETAIL_HOST_MEMORY_BUDGET, [1, 6]),  # probe row, then all 3 timesteps x 2 rows at once
        (stored + 2 * pass_bytes, [1, 4, 2]),  # two timesteps per pass
        (1, [1, 2, 2, 2]),  # nothing fits: one call per step
    ):
        monkeypatch.setattr(module, "_DETAIL_HOST_MEMORY_BUDGET", budget)
        sizes, handle = _record_detail_batches(pipe)
        try:
            automatic = _crops(pipe, steps=steps)
        finally:
            handle.remove()
        assert sizes == calls, budget
        torch.testing.assert_close(automatic, reference, atol=ATOL, rtol=RTOL, msg=str(budget))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs an accelerator")
def test_model_cpu_offload_equals_on_device():
    reference = _crops(_pipeline().to("cuda"))
    offloaded = _pipeline()
    offloaded.enable_model_cpu_offload()
    for batched in (False, True, None):
        torch.testing.assert_close(_crops(offloaded, batched_detail_features=batched), reference,
                                   atol=1e-4, rtol=1e-3)
    assert offloaded.unet.device.type == "cpu"  # back on the CPU after the call
