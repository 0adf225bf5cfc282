"""Does the world's base model draw what its captions say? (issue 26)

Samples the shipped caption-conditioned base (`anydoor.world.text_to_image`,
DDIM 50, classifier-free guidance) for 64 captions that name a colour family
and a shape (every colour x shape pair twice, texture, marker and background
drawn with a fixed seed), and classifies each sample's colour family and
shape with the in-world CLIP-I metric model's image tower: the nearest class
centroid among embeddings of real held-out scene crops of known attributes
(`anydoor.data.world_scenes`, objects of `world_vae.HELD_OUT_SEED`; the
metric model's text tower is not shipped, so its image space is read through
labelled images). Rows:

- samples scored against their own caption's attributes;
- the same samples scored against another caption's (a fixed derangement): what
  a base that ignores captions would score (the chance floor of these images);
- real held-out crops (another draw) through the same classifier: the ceiling.

    python benchmarks/world_sample_attributes.py --out docs/world_samples [--guidance 5.0]

Writes attributes.json, attributes.md and grid.png (8 captions x 6 samples at the last guidance, 128 px each).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from anydoor.data.captions import COLOUR_FAMILIES, SHAPE_WORDS, TEMPLATES, Attributes
from anydoor.data.synthetic import BACKGROUNDS, TEXTURES

CAPTIONS = 64
TEMPLATE = TEMPLATES[0]  # every attribute named
CAPTION_SEED = 2026
CENTROID_CROPS = 1024
CEILING_CROPS = 512


def caption_set(count: int = CAPTIONS) -> tuple[list[str], list[Attributes]]:
    rng = np.random.default_rng(CAPTION_SEED)
    shapes = tuple(SHAPE_WORDS)
    captions, attributes = [], []
    for i in range(count):
        a = Attributes(shape=shapes[(i // len(COLOUR_FAMILIES)) % len(shapes)],
                       colour=COLOUR_FAMILIES[i % len(COLOUR_FAMILIES)],
                       texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                       marker=COLOUR_FAMILIES[int(rng.integers(len(COLOUR_FAMILIES)))],
                       background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
        captions.append(TEMPLATE.format(**a.words()))
        attributes.append(a)
    return captions, attributes


def _embed(embedder, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return torch.cat([embedder(x[i : i + 128]) for i in range(0, len(x), 128)])


def _labelled_crops(count: int, seed: int):
    from anydoor.data.world_scenes import scene_crops
    from anydoor.data.world_views import world_objects
    from anydoor.training.world_vae import HELD_OUT_OBJECTS, HELD_OUT_SEED

    crops = scene_crops(world_objects(HELD_OUT_OBJECTS, HELD_OUT_SEED), count, 64, np.random.default_rng(seed),
                        empty_prob=0.0)
    return crops.images, crops.attributes


class CentroidClassifier:
    """Nearest class centroid (cosine) in an embedding space, per attribute."""

    def __init__(self, embeddings: torch.Tensor, attributes: list[Attributes], names=("colour", "shape")):
        self.centroids = {}
        for name in names:
            labels = sorted({getattr(a, name) for a in attributes})
            rows = [torch.nn.functional.normalize(
                embeddings[[getattr(a, name) == label for a in attributes]].mean(0), dim=0) for label in labels]
            self.centroids[name] = (labels, torch.stack(rows))

    def accuracy(self, embeddings: torch.Tensor, attributes: list[Attributes]) -> dict:
        out = {}
        for name, (labels, centroids) in self.centroids.items():
            predicted = (embeddings @ centroids.T).argmax(1)
            truth = torch.tensor([labels.index(getattr(a, name)) for a in attributes])
            out[name] = float((predicted == truth).float().mean())
        return out


def captioned_rows(rows: list[np.ndarray], texts: list[str], pad: int = 18) -> np.ndarray:
    """Stack image rows, each under a line of text (PIL's default font), on white."""
    import PIL.Image
    import PIL.ImageDraw

    width = max(r.shape[1] for r in rows)
    canvas = PIL.Image.new("RGB", (width, sum(r.shape[0] + pad for r in rows)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    y = 0
    for row, text in zip(rows, texts):
        draw.text((2, y + 3), text, fill="black")
        canvas.paste(PIL.Image.fromarray(row), (0, y + pad))
        y += row.shape[0] + pad
    return np.asarray(canvas)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/world_samples"))
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import PIL.Image

    from anydoor.world.text_to_image import image_grid, load_text_to_image, sample_captions
    from eval.backbones import load_world_backbones

    clip = load_world_backbones().clip
    images, attributes = _labelled_crops(CENTROID_CROPS, seed=1)
    classifier = CentroidClassifier(_embed(clip, images), attributes)
    real, real_attributes = _labelled_crops(CEILING_CROPS, seed=2)
    captions, caption_attributes = caption_set()
    deranged = [caption_attributes[(i + 9) % len(caption_attributes)] for i in range(len(caption_attributes))]
    pipe, encoder = load_text_to_image()
    rows = {"real held-out crops (ceiling)": classifier.accuracy(_embed(clip, real), real_attributes)}
    samples = {}
    for guidance in args.guidance:
        samples[guidance] = sample_captions(pipe, encoder, captions, seed=args.seed, guidance_scale=guidance)
        embedded = _embed(clip, samples[guidance])
        rows[f"samples, guidance {guidance:g}: own caption"] = classifier.accuracy(embedded, caption_attributes)
        rows[f"samples, guidance {guidance:g}: another caption (floor)"] = classifier.accuracy(embedded, deranged)
    chance = {"colour": 1 / len(COLOUR_FAMILIES), "shape": 1 / len(SHAPE_WORDS)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attributes.json").write_text(json.dumps({"rows": rows, "chance": chance, "captions": captions},
                                                         indent=1) + "\n")
    lines = ["| images | colour family | shape |", "|---|---|---|"]
    lines += [f"| {name} | {r['colour']:.2f} | {r['shape']:.2f} |" for name, r in rows.items()]
    lines += [f"| chance | {chance['colour']:.2f} | {chance['shape']:.2f} |"]
    (args.out / "attributes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    # The grid: 8 captions (one per colour family, the four shapes twice), 6 seeds each, 128 px per sample.
    guidance = args.guidance[-1]
    shown = [captions[i] for i in range(0, 16, 2)]
    rows_ = [image_grid(sample_captions(pipe, encoder, [c] * 6, seed=args.seed + 1, guidance_scale=guidance), 6, 2)
             for c in shown]
    PIL.Image.fromarray(captioned_rows(rows_, [f"{c}  (guidance {guidance:g})" for c in shown])).save(
        args.out / "grid.png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
