"""AnyDoorPipeline: put a reference object into a scene (Chen et al., CVPR 2024).

Stable Diffusion with two changes (DESIGN.md section 1): the text encoder is
replaced by an ID extractor (DINOv2 tokens of the background-removed object),
and a ControlNet-style detail extractor reads a collage (the scene crop with
the object's high-frequency map pasted into the target box, plus a mask
channel). Sampling follows the released recipe: DDIM 50 steps, eta 0,
classifier-free guidance 5.0 whose unconditional branch uses the tokens of an
all-zero image and keeps the collage hint.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from anydoor.data.detail_maps import DETAIL_MAP_NAMES
from anydoor.data.images import as_binary_mask, as_rgb_uint8, load_rgba_object
from anydoor.data.pairs import AnyDoorSample, PairConfig, paste_back, prepare_inference_inputs
from anydoor.models.denoiser import detail_residuals, detail_residuals_for_timesteps, predict_noise

# Imported (not only type hints): diffusers' loader resolves a saved pipeline's
# `id_extractor` entry from this module, which must already be imported.
from anydoor.models.id_extractors import CLIPIDExtractor, DINOv2IDExtractor
from anydoor.presets import check_prediction_type

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
RANDOM_DETAIL_MAPS = ("noise", "shuffle")
# Automatic batched detail features: the stored residuals of every step plus
# one pass's activations, taken as about this many times the residuals of the
# rows in that pass, must fit in a memory budget. On CUDA it is this share of
# the free GPU memory; the rest stays for the UNet steps and the VAE decode.
_DETAIL_MEMORY_SHARE = 0.5
_DETAIL_ACTIVATION_FACTOR = 4
# Elsewhere (CPU, MPS) a fixed budget: large enough for the embedded default
# (64 px: about 10 MiB for 50 steps x 2 guidance rows, where batching measured
# 1.4-1.9x faster on a CPU since per-call overhead dominates, README "Speed"),
# far below full size (512 px: about 2.7 GB for 50 steps, where a
# compute-bound CPU gains nothing from holding them).
_DETAIL_HOST_MEMORY_BUDGET = 256 * 2**20  # bytes


@dataclass
class AnyDoorPipelineOutput(BaseOutput):
    """Output of `AnyDoorPipeline`.

    images: one full-resolution composite per output (the scene with the
        generated crop pasted back); PIL images, HxWx3 float arrays in [0,1]
        ("np") or 3xHxW float tensors in [0,1] ("pt"). A list, since scenes
        may differ in size. None for output_type "latent".
    crops: the generated SxS crops: PIL list, (B,S,S,3) array or (B,3,S,S)
        tensor in [0,1]; the denoised latents for output_type "latent".
    """

    images: list | None
    crops: Any


def _check_scheduler_prediction(scheduler, prediction_type: str) -> None:
    """The scheduler must read the UNet's output as what the UNet was trained to predict."""
    got = getattr(scheduler.config, "prediction_type", "epsilon")
    if got != prediction_type:
        raise ValueError(
            f"scheduler prediction_type={got!r} does not match the model's {prediction_type!r} "
            "(the pipeline config's prediction_type): the released AnyDoor and SD2.1-base predict "
            "'epsilon', the tiny preset 'v_prediction'. Build swapped schedulers with "
            f"Scheduler.from_config(pipe.scheduler.config) or pass prediction_type={prediction_type!r}."
        )


def _as_list(value, n: int, name: str) -> list:
    """Broadcast a single value to n items, or check that a list has n items."""
    if isinstance(value, (list, tuple)) and not (name == "scene_box" and _is_box(value)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} items but object_image has {n}")
        return list(value)
    return [value] * n


def _is_box(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value)
    )


@dataclass
class DetailFeatures:
    """The detail residuals of every step of one sampling run (DESIGN.md 1c:
    they do not depend on the noisy latent), computed before the loop.

    down: one (U, R, C, H, W) tensor per down residual, U the distinct
        timesteps of the run and R the rows of a model call (both guidance
        branches); mid: (U, R, C, H, W).
    step_rows: for each loop step, its timestep's index in U.
    """

    down: list[torch.Tensor]
    mid: torch.Tensor
    step_rows: list[int]

    def at(self, step: int, rows: slice = slice(None)) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals of loop step `step` (views), for the rows `rows`."""
        u = self.step_rows[step]
        return [d[u, rows] for d in self.down], self.mid[u, rows]


class AnyDoorPipeline(DiffusionPipeline):
    r"""Zero-shot object insertion (AnyDoor).

    Components:
        vae: `AutoencoderKL` (SD2.1's, or the embedded default's tiny one).
        unet: `UNet2DConditionModel` whose cross-attention reads ID tokens.
        controlnet: the detail extractor, a `ControlNetModel` with a zeroed
            `conv_in` (it never sees the noisy latent, DESIGN.md 1c).
        id_extractor: `DINOv2IDExtractor` or `CLIPIDExtractor`.
        scheduler: a diffusers scheduler whose prediction_type is the UNet's;
            DDIM (released).
    Configuration: `image_size` (S, the generated crop's side), `detail_map`
    (what is pasted into the collage: hf, rgb, noise, shuffle, none),
    `remove_background` (white out the reference background), the default
    `control_scale`, and `prediction_type` (what the UNet predicts: "epsilon"
    for the released model, "v_prediction" for the embedded default; taken
    from the scheduler when not given).
    """

    model_cpu_offload_seq = "id_extractor->controlnet->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        id_extractor: DINOv2IDExtractor | CLIPIDExtractor,
        scheduler: KarrasDiffusionSchedulers,
        image_size: int = 512,
        detail_map: str = "hf",
        remove_background: bool = True,
        control_scale: float = 1.0,
        prediction_type: str | None = None,
    ):
        super().__init__()
        if detail_map not in DETAIL_MAP_NAMES:
            raise ValueError(f"detail_map={detail_map!r} is not one of {', '.join(DETAIL_MAP_NAMES)}")
        if prediction_type is None:  # pipelines saved before the key existed: the scheduler says it
            prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        _check_scheduler_prediction(scheduler, check_prediction_type(prediction_type))
        self.register_modules(
            vae=vae, unet=unet, controlnet=controlnet, id_extractor=id_extractor, scheduler=scheduler
        )
        self.register_to_config(
            image_size=int(image_size),
            detail_map=detail_map,
            remove_background=bool(remove_background),
            control_scale=float(control_scale),
            prediction_type=prediction_type,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if image_size % self.vae_scale_factor:
            raise ValueError(f"image_size={image_size} is not a multiple of the VAE factor {self.vae_scale_factor}")
        self.pair_config = PairConfig(
            image_size=int(image_size), detail_map=detail_map, remove_background=bool(remove_background)
        )

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        object_images: list,
        object_masks: list,
        scene_images: list,
        scene_masks: list,
        scene_boxes: list,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        generator,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        sequential_guidance: bool = False,
        batched_detail_features: bool | None = None,
        detail_chunk_size: int | None = None,
        shape_control: bool = False,
    ) -> None:
        self._check_sampling_options(
            num_inference_steps, guidance_scale, callback_on_step_end_tensor_inputs, sequential_guidance,
            batched_detail_features, detail_chunk_size,
        )
        if not isinstance(shape_control, (bool, np.bool_)):  # checked first: the loop below reads it as a bool
            raise TypeError(f"shape_control must be a bool, got {shape_control!r}")
        for i, (mask, box) in enumerate(zip(scene_masks, scene_boxes)):
            if (mask is None) == (box is None):
                raise ValueError(
                    f"pair {i}: give exactly one of scene_mask or scene_box "
                    f"(got {'both' if mask is not None else 'neither'})"
                )
            if shape_control and mask is None:
                raise ValueError(f"pair {i}: shape_control=True needs a scene_mask (the silhouette), got a scene_box")
        if not isinstance(num_images_per_prompt, (int, np.integer)) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        total = len(object_images) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator is a list of {len(generator)} but {total} images are requested "
                f"({len(object_images)} pairs x num_images_per_prompt={num_images_per_prompt})"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")

    def _check_sampling_options(
        self,
        num_inference_steps: int,
        guidance_scale: float,
        callback_on_step_end_tensor_inputs: Sequence[str],
        sequential_guidance: bool,
        batched_detail_features: bool | None,
        detail_chunk_size: int | None,
    ) -> None:
        """The checks of `check_inputs` that `generate_crops` shares."""
        _check_scheduler_prediction(self.scheduler, self.config.prediction_type)
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if not isinstance(sequential_guidance, bool):
            raise TypeError(f"sequential_guidance must be a bool, got {sequential_guidance!r}")
        if batched_detail_features is not None and not isinstance(batched_detail_features, bool):
            raise TypeError(f"batched_detail_features must be True, False or None, got {batched_detail_features!r}")
        if detail_chunk_size is not None and (
            isinstance(detail_chunk_size, bool)
            or not isinstance(detail_chunk_size, (int, np.integer))
            or detail_chunk_size < 1
        ):
            raise ValueError(f"detail_chunk_size must be a positive integer or None, got {detail_chunk_size!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}"
            )

    @staticmethod
    def _object_and_mask(object_image, object_mask, index: int) -> tuple[np.ndarray, np.ndarray]:
        """An RGBA object's alpha (> 128, the released reading) is its mask when no mask is given."""
        if object_mask is not None:
            return as_rgb_uint8(object_image, name=f"object_image[{index}]"), object_mask
        try:
            return load_rgba_object(object_image)
        except (ValueError, TypeError) as err:
            raise type(err)(
                f"object_mask[{index}] is missing and object_image[{index}] gives no mask: {err} "
                "(pass an RGBA object or an explicit object_mask)"
            ) from None

    def _numpy_rng(self, generator: torch.Generator | None) -> np.random.Generator | None:
        """The noise/shuffle detail maps draw from the caller's generator (DESIGN.md)."""
        if self.config.detail_map not in RANDOM_DETAIL_MAPS:
            return None
        if generator is None:
            raise ValueError(
                f"detail_map={self.config.detail_map!r} is random: pass a torch.Generator "
                "so the collage is reproducible"
            )
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
        return np.random.default_rng(seed)

    def prepare_inputs(
        self, object_image, object_mask, scene_image, scene_mask=None, scene_box=None, generator=None,
        shape_control: bool = False,
    ) -> AnyDoorSample:
        """DESIGN.md "Inference geometry": reference padded by 1.2, box x1.1,
        crop x2.0, box mask (or the scene mask with `shape_control`), no perturbation."""
        obj, obj_mask = self._object_and_mask(object_image, object_mask, 0)
        return prepare_inference_inputs(
            obj,
            obj_mask,
            scene_image,
            scene_mask=scene_mask,
            scene_box=scene_box,
            config=self.pair_config,
            rng=self._numpy_rng(generator),
            shape_control=shape_control,
        )

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        object_image,
        object_mask=None,
        scene_image=None,
        scene_mask=None,
        scene_box=None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        control_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        eta: float = 0.0,
        sequential_guidance: bool = False,
        batched_detail_features: bool | None = None,
        detail_chunk_size: int | None = None,
        shape_control: bool = False,
    ) -> AnyDoorPipelineOutput | tuple:
        r"""Compose the object into the scene.

        Args:
            object_image: the reference object (PIL / numpy uint8 HxWx3 or RGBA /
                torch), or a list of them (one per pair).
            object_mask: its mask (HxW, binary); None when the object is RGBA.
            scene_image: the scene (or a list, one per pair).
            scene_mask / scene_box: where the object goes: a binary mask (its
                box, or with `shape_control` its silhouette) or a box
                (x0, y0, x1, y1); exactly one of them per pair.
            num_inference_steps: sampler steps (released: 50).
            guidance_scale: classifier-free guidance (released: 5.0); <= 1 runs
                the conditional branch only.
            control_scale: detail-extractor strength (default: the config's, 1.0).
            num_images_per_prompt: outputs per pair.
            generator: a torch.Generator, or one per output image so that image i
                does not depend on the batch it is in.
            output_type: "pil", "np", "pt" or "latent".
            callback_on_step_end: diffusers' step callback.
            eta: DDIM's eta (released: 0).
            sequential_guidance: run the two guidance branches one after the
                other, as the released code does (half the activation memory,
                slower); by default both go in one batch. Same results up to
                float rounding.
            batched_detail_features: compute the detail extractor's residuals
                for every step in one batched pass before the loop (they do not
                depend on the noisy latent, DESIGN.md 1c), so that the loop runs
                only the UNet. None (automatic): on when the stored residuals
                of every step plus one pass, estimated from a one-row probe
                call, fit in a memory budget: half the free GPU memory on
                CUDA, a fixed 256 MiB elsewhere (on a CPU batching pays at the
                embedded default's 64 px, where the per-call overhead
                dominates; at 512 px the residuals of 50 steps take about
                2.7 GB and a CPU is compute-bound); one call per step
                otherwise. Same results up to float rounding.
            detail_chunk_size: timesteps per detail-extractor pass when the
                features are batched; None: all in one pass (automatic mode: as
                many as the budget allows; a given size there batches without
                the estimate).
            shape_control: use each scene mask itself (not its box) as the
                collage's mask channel: AnyDoor's shape-controlled insertion
                (DESIGN.md 1; training shows perturbed true masks there), so
                the silhouette fixes the object's shape and pose. Needs
                scene_mask; the released default is the box (False).

        Speed and memory options that do not change results beyond float
        rounding: `pipe.to("cuda", torch.bfloat16)`, `set_memory_format`,
        `compile_denoiser`, `enable_model_cpu_offload()`,
        `pipe.vae.enable_slicing()` / `enable_tiling()` (README "Speed").
        """
        # 1. Check inputs
        pairs_given = isinstance(object_image, (list, tuple))
        object_images = list(object_image) if pairs_given else [object_image]
        n_pairs = len(object_images)
        if n_pairs == 0:
            raise ValueError("object_image is an empty list")
        if scene_image is None:
            raise ValueError("scene_image is required")
        object_masks = _as_list(object_mask, n_pairs, "object_mask") if pairs_given else [object_mask]
        scene_images = _as_list(scene_image, n_pairs, "scene_image") if pairs_given else [scene_image]
        scene_masks = _as_list(scene_mask, n_pairs, "scene_mask") if pairs_given else [scene_mask]
        scene_boxes = _as_list(scene_box, n_pairs, "scene_box") if pairs_given else [scene_box]
        control_scale = self.config.control_scale if control_scale is None else float(control_scale)
        self.check_inputs(
            object_images, object_masks, scene_images, scene_masks, scene_boxes,
            num_inference_steps, guidance_scale, num_images_per_prompt, generator, output_type,
            callback_on_step_end_tensor_inputs, sequential_guidance, batched_detail_features, detail_chunk_size,
            shape_control,
        )
        batch_size = n_pairs * num_images_per_prompt
        generators = generator if isinstance(generator, list) else [generator] * batch_size

        # 2. Prepare inputs: reference, collage hint and paste-back geometry per
        #    output image (the noise/shuffle maps draw from that image's generator)
        samples: list[AnyDoorSample] = []
        for p in range(n_pairs):
            scene_np = as_rgb_uint8(scene_images[p], name=f"scene_image[{p}]")
            scene_mask_p = (
                None if scene_masks[p] is None
                else as_binary_mask(scene_masks[p], name=f"scene_mask[{p}]", shape=scene_np.shape[:2])
            )
            obj, obj_mask = self._object_and_mask(object_images[p], object_masks[p], p)
            shared = None
            for k in range(num_images_per_prompt):
                if shared is None or self.config.detail_map in RANDOM_DETAIL_MAPS:
                    shared = prepare_inference_inputs(
                        obj, obj_mask, scene_np, scene_mask=scene_mask_p, scene_box=scene_boxes[p],
                        config=self.pair_config,
                        rng=self._numpy_rng(generators[p * num_images_per_prompt + k]),
                        shape_control=shape_control,
                    )
                samples.append(shared)
        scenes = [as_rgb_uint8(scene_images[i // num_images_per_prompt]) for i in range(batch_size)]
        reference = torch.from_numpy(np.stack([s.reference for s in samples])).permute(0, 3, 1, 2)
        hint = torch.from_numpy(np.stack([s.hint for s in samples])).permute(0, 3, 1, 2)

        # 3.-8. ID tokens, timesteps, initial latents, detail features, the
        #       denoising loop and the decode, on the prepared tensors
        crops = self.generate_crops(
            reference, hint, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            control_scale=control_scale, generator=generator,
            output_type="latent" if output_type == "latent" else "pt",
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, eta=eta,
            sequential_guidance=sequential_guidance, batched_detail_features=batched_detail_features,
            detail_chunk_size=detail_chunk_size,
        )
        if output_type == "latent":
            return AnyDoorPipelineOutput(images=None, crops=crops) if return_dict else (None, crops)

        # 9. Paste back into the full scenes (only inside the crop box)
        crops_u8 = (crops.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        composites = [paste_back(c, scenes[i], samples[i].paste) for i, c in enumerate(crops_u8)]
        images, crops_out = self._format(composites, crops, crops_u8, output_type)
        if not return_dict:
            return images, crops_out
        return AnyDoorPipelineOutput(images=images, crops=crops_out)

    @torch.no_grad()
    def generate_crops(
        self,
        reference: torch.Tensor,
        hint: torch.Tensor,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        control_scale: float | None = None,
        eta: float = 0.0,
        sequential_guidance: bool = False,
        batched_detail_features: bool | None = None,
        detail_chunk_size: int | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        output_type: str = "pt",
    ) -> torch.Tensor:
        r"""Steps 3-8 of `__call__` on prepared tensors: the crops of a batch of
        references and collage hints (a training batch, or `collate_samples`
        of `prepare_inputs` samples), without the paste-back.

        Args:
            reference: (B, 3, 224, 224) in [0, 1], what the ID extractor sees.
            hint: (B, 4, S, S) collage hint (RGB in [-1, 1] + mask channel),
                S the config's image_size.
            generator: a torch.Generator, or one per row.
            output_type: "pt": the decoded crops, (B, 3, S, S) in [0, 1] on the
                CPU; "latent": the denoised latents (float32).
            The other arguments are `__call__`'s.
        """
        self._check_sampling_options(
            num_inference_steps, guidance_scale, callback_on_step_end_tensor_inputs, sequential_guidance,
            batched_detail_features, detail_chunk_size,
        )
        size, channels = self.config.image_size, self.controlnet.config.conditioning_channels
        if not torch.is_tensor(reference) or reference.ndim != 4 or reference.shape[1] != 3:
            raise ValueError(
                "reference must be a (B, 3, H, W) tensor (the ID extractor's input, 224 x 224), "
                f"got {getattr(reference, 'shape', type(reference).__name__)}"
            )
        batch_size = reference.shape[0]
        if not torch.is_tensor(hint) or tuple(hint.shape) != (batch_size, channels, size, size):
            raise ValueError(
                f"hint must be a ({batch_size}, {channels}, {size}, {size}) tensor (one row per reference), "
                f"got {getattr(hint, 'shape', type(hint).__name__)}"
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} but reference has {batch_size} rows")
        if output_type not in ("pt", "latent"):
            raise ValueError(f"output_type={output_type!r} is not one of pt, latent")
        device = self._execution_device
        dtype = self.unet.dtype
        do_guidance = guidance_scale > 1.0
        control_scale = self.config.control_scale if control_scale is None else float(control_scale)
        reference = reference.to(device=device, dtype=self.id_extractor.dtype)
        hint = hint.to(device=device, dtype=dtype)

        # 3. ID tokens, once per call; the unconditional branch sees the tokens
        #    of an all-zero image (DESIGN.md 1c), the hint is kept in both
        id_tokens = self.id_extractor(reference).to(dtype)
        if do_guidance:
            uncond_tokens = self.id_extractor.unconditional_tokens(batch_size).to(device=device, dtype=dtype)
            id_tokens = torch.cat([uncond_tokens, id_tokens])
            hint = torch.cat([hint, hint])

        # 4. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 5. Initial latents (per-image generators give per-image noise); kept
        #    in float32 so that the scheduler's arithmetic does not round to a
        #    low-precision model dtype, and the noise does not depend on it
        side = self.config.image_size // self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, side, side)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        # 6. Detail features for every step at once: the detail extractor sees
        #    the hint, the timestep and the ID tokens, never the latents
        features = self._detail_features(
            hint, id_tokens, timesteps, control_scale, batched_detail_features, detail_chunk_size
        )

        # 7. Denoising loop: the UNet (and the detail extractor, unless its
        #    features are precomputed), both guidance branches in one batch
        #    unless sequential_guidance
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                eps = self._guided_noise(
                    latents, t, id_tokens, hint, control_scale, guidance_scale if do_guidance else None,
                    sequential_guidance, features, i,
                )
                latents = self.scheduler.step(eps, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    # locals() taken here: inside a comprehension it would be the comprehension's own.
                    step_vars = locals()
                    tensors = {k: step_vars[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, tensors)
                    latents = outputs.pop("latents", latents)
                progress.update()
        del features  # free the stored residuals before the VAE decode

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return latents

        # 8. Decode the crops
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        decoded = self.vae.decode(latents, return_dict=False)[0]
        crops = ((decoded.float().clamp(-1, 1) + 1) / 2).cpu()
        self.maybe_free_model_hooks()
        return crops

    # ------------------------------------------------------- denoising steps
    def _guided_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        id_tokens: torch.Tensor,
        hint: torch.Tensor,
        control_scale,
        guidance_scale: float | None,
        sequential: bool,
        features: DetailFeatures | None,
        step: int,
    ) -> torch.Tensor:
        """eps of one step in float32, with classifier-free guidance
        eps_u + w (eps_c - eps_u) unless `guidance_scale` is None.

        `id_tokens` and `hint` hold the unconditional rows first, then the
        conditional ones (when guiding)."""
        dtype = self.unet.dtype

        def eps_of(rows: slice, model_latents: torch.Tensor) -> torch.Tensor:
            residuals = None if features is None else features.at(step, rows)
            model_input = self.scheduler.scale_model_input(model_latents, t).to(dtype)
            return predict_noise(
                self.unet, self.controlnet, model_input, t, id_tokens[rows], hint[rows],
                control_scale=control_scale, residuals=residuals,
            ).float()

        if guidance_scale is None:
            return eps_of(slice(None), latents)
        n = latents.shape[0]
        if sequential:
            # The released loop: the conditional pass, then the unconditional one.
            eps_cond = eps_of(slice(n, None), latents)
            eps_uncond = eps_of(slice(0, n), latents)
        else:
            eps_uncond, eps_cond = eps_of(slice(None), torch.cat([latents, latents])).chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def _detail_features(
        self,
        hint: torch.Tensor,
        id_tokens: torch.Tensor,
        timesteps: torch.Tensor,
        control_scale,
        batched: bool | None,
        chunk_size: int | None,
    ) -> DetailFeatures | None:
        """The run's detail features (`DetailFeatures`), or None for one
        detail-extractor call per step (see `__call__`'s batched_detail_features)."""
        if batched is False:
            return None
        # Schedulers that repeat a timestep (Heun, KDPM2) need its features once.
        distinct, step_rows = torch.unique(timesteps, return_inverse=True)
        if batched is None and chunk_size is None:
            chunk_size = self._detail_chunk_size_for_memory(
                hint, id_tokens, distinct, control_scale, self._execution_device
            )
            if chunk_size is None:
                return None
        down, mid = detail_residuals_for_timesteps(
            self.controlnet, hint, distinct, id_tokens, control_scale=control_scale, chunk_size=chunk_size
        )
        return DetailFeatures(down=down, mid=mid, step_rows=step_rows.tolist())

    def _detail_chunk_size_for_memory(
        self, hint: torch.Tensor, id_tokens: torch.Tensor, timesteps: torch.Tensor, control_scale, device
    ) -> int | None:
        """Timesteps per detail-extractor pass such that every step's stored
        residuals and one pass fit in the memory budget (an estimate from one
        probe row): half the free GPU memory on CUDA, `_DETAIL_HOST_MEMORY_BUDGET`
        elsewhere; None when the stored residuals and one timestep's pass do not fit."""
        down, mid = detail_residuals(
            self.controlnet, hint[:1], timesteps[:1], id_tokens[:1], control_scale=control_scale
        )
        row_bytes = sum(r.numel() * r.element_size() for r in (*down, mid))
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # torch's cache is usable
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            available = _DETAIL_MEMORY_SHARE * free
        else:
            available = _DETAIL_HOST_MEMORY_BUDGET
        budget = available - timesteps.numel() * hint.shape[0] * row_bytes
        per_timestep = _DETAIL_ACTIVATION_FACTOR * hint.shape[0] * row_bytes
        if budget < per_timestep:
            return None
        return int(min(timesteps.numel(), budget // per_timestep))

    # ------------------------------------------------------- speed options
    def set_memory_format(self, memory_format: torch.memory_format = torch.channels_last) -> "AnyDoorPipeline":
        """Put the convolutional networks (UNet, detail extractor, VAE) in
        `memory_format`: ``torch.channels_last`` is often faster for convs on
        GPUs (tensor cores), ``torch.contiguous_format`` undoes it. Results do
        not change beyond float rounding. Returns the pipeline."""
        formats = (torch.channels_last, torch.contiguous_format)
        if memory_format not in formats:
            raise ValueError(
                f"memory_format must be torch.channels_last or torch.contiguous_format, got {memory_format!r}"
            )
        for module in (self.unet, self.controlnet, self.vae):
            module.to(memory_format=memory_format)
        return self

    def compile_denoiser(self, **compile_kwargs) -> "AnyDoorPipeline":
        """``torch.compile`` the UNet and the detail extractor in place (the
        modules keep their class, config and registration); keyword arguments
        go to ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``,
        ``fullgraph=True``). The first call at each new shape compiles, later
        ones reuse it. Returns the pipeline."""
        self.unet.compile(**compile_kwargs)
        self.controlnet.compile(**compile_kwargs)
        return self

    def _extra_step_kwargs(self, generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @staticmethod
    def _format(composites: list[np.ndarray], crops: torch.Tensor, crops_u8: np.ndarray, output_type: str):
        if output_type == "pil":
            return [PIL.Image.fromarray(c) for c in composites], [PIL.Image.fromarray(c) for c in crops_u8]
        if output_type == "np":
            return [c.astype(np.float32) / 255 for c in composites], crops.permute(0, 2, 3, 1).numpy()
        return [torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in composites], crops

    # ------------------------------------------------------------ base models
    @classmethod
    def from_base_models(
        cls,
        stable_diffusion: str | Path = "stabilityai/stable-diffusion-2-1-base",
        id_backbone: str | Path = "facebook/dinov2-giant",
        id_extractor: str = "dinov2",
        local_files_only: bool | None = None,
        detail_map: str = "hf",
        remove_background: bool = True,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        clip_pretrained: str | Path | None = None,
        projector_generator: torch.Generator | None = None,
    ) -> "AnyDoorPipeline":
        """Assemble an untrained AnyDoor from SD2.1-base and an ID backbone.

        Loads the UNet and VAE with diffusers' loaders, the ID backbone with
        transformers (`dinov2`, `dinov2-global`) or open_clip (`clip`: then
        `id_backbone` is an open_clip model name such as "ViT-H-14" and
        `clip_pretrained` a local weights file or open_clip tag), builds the
        detail extractor from the UNet with a zeroed conv_in (DESIGN.md 1c)
        and a fresh projector. `local_files_only=None` means: only local
        folders and the Hugging Face cache when HF_HUB_OFFLINE is set, the Hub
        otherwise. Missing weights raise a message saying how to provide them.
        """
        from anydoor.models.base_loading import load_base_components

        components = load_base_components(
            stable_diffusion=stable_diffusion,
            id_backbone=id_backbone,
            id_extractor=id_extractor,
            local_files_only=local_files_only,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            clip_pretrained=clip_pretrained,
            projector_generator=projector_generator,
        )
        image_size = components["unet"].config.sample_size * 2 ** (
            len(components["vae"].config.block_out_channels) - 1
        )
        return cls(
            **components, image_size=image_size, detail_map=detail_map, remove_background=remove_background
        )
