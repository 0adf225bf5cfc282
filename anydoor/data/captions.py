"""Captions of the synthetic world: category-level words for what an image shows.

The in-world CLIP-like models (DESIGN.md section 4, "The embedded world's
pretrained models") learn from (image, caption) pairs, as OpenCLIP learned
from web alt-texts. Web captions name categories ("a red mug"), not
instances, so a caption here names an object's *attributes*: its shape, the
colour family of its body, its texture, the colour family of its marker and
the kind of background behind it. Many objects share a caption; what tells
two red striped ellipses apart is left to the image towers, as in the real
world.

Several phrasings, some naming only a few attributes (web captions are
incomplete too), are drawn with the caller's generator. The vocabulary is
closed: `caption_vocabulary` lists every word any caption can hold, and
`build_caption_tokenizer` makes a word-level tokenizer over exactly those
words (a handful of rows of token embeddings instead of CLIP's 49,408 BPE
rows).
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

# Colour families by hue (degrees, HSV), as people name colours: each family
# is the half-open hue interval [start, next start); red wraps around 0.
COLOUR_FAMILIES = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
_HUE_STARTS = (345.0, 15.0, 40.0, 70.0, 160.0, 195.0, 260.0, 300.0)

SHAPE_WORDS = {"ellipse": "ellipse", "rounded_rect": "rounded rectangle", "polygon": "polygon", "blob": "blob"}
TEXTURE_WORDS = {"stripes": "striped", "checks": "checkered", "dots": "dotted", "glyphs": "lettered", "patches": "patchy"}
# "white": the object alone on white, as the ID extractor and the identity metrics see it (background removed).
BACKGROUND_WORDS = {"gradient": "gradient", "noise": "noisy", "stripes": "striped", "shapes": "cluttered", "white": "white"}
ATTRIBUTES = ("shape", "colour", "texture", "marker", "background")

# Several phrasings; the short ones name a few attributes only, like most web captions.
TEMPLATES = (
    "a {colour} {texture} {shape} with a {marker} marker on a {background} background",
    "a {texture} {colour} {shape} on a {background} background",
    "a photo of a {colour} {shape} with a {marker} marker",
    "{colour} {shape} , {texture} , {marker} marker , {background} background",
    "a {shape} in {colour} with a {marker} dot",
    "a {texture} {shape} on a {background} background",
    "a {colour} object on a {background} background",
    "a {colour} {shape}",
    # One attribute named, the others left out: the zero-shot prompts (`ZERO_SHOT_TEMPLATES`).
    "a photo of a {colour} object",
    "a photo of a {shape}",
    "a photo of a {texture} object",
)
ZERO_SHOT_TEMPLATES = {
    "colour": "a photo of a {colour} object",
    "shape": "a photo of a {shape}",
    "texture": "a photo of a {texture} object",
}

SPECIAL_TOKENS = ("[PAD]", "[SOT]", "[UNK]", "[EOT]")
CONTEXT_LENGTH = 20  # tokens per caption, [SOT] and [EOT] included; the longest caption has 15


def colour_family(rgb) -> str:
    """The colour family (`COLOUR_FAMILIES`) of an RGB triple in 0..255, by its hue."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360.0
    index = int(np.searchsorted(np.asarray(_HUE_STARTS[1:]), hue, side="right"))
    # Hues from 345 up fall past the last start: red again.
    return COLOUR_FAMILIES[0] if hue >= _HUE_STARTS[0] else COLOUR_FAMILIES[index]


@dataclass(frozen=True)
class Attributes:
    """What a caption can say about an image of one object (values are the generator's names)."""

    shape: str  # synthetic.SHAPES
    colour: str  # COLOUR_FAMILIES
    texture: str  # synthetic.TEXTURES
    marker: str  # COLOUR_FAMILIES
    background: str  # synthetic.BACKGROUNDS or "white"

    def __post_init__(self):
        choices = {
            "shape": SHAPE_WORDS, "colour": COLOUR_FAMILIES, "texture": TEXTURE_WORDS,
            "marker": COLOUR_FAMILIES, "background": BACKGROUND_WORDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {tuple(allowed)}")

    def words(self) -> dict[str, str]:
        """The caption word of each attribute."""
        return {
            "shape": SHAPE_WORDS[self.shape], "colour": self.colour, "texture": TEXTURE_WORDS[self.texture],
            "marker": self.marker, "background": BACKGROUND_WORDS[self.background],
        }


def object_attributes(obj, background: str) -> Attributes:
    """The attributes of a `synthetic.SyntheticObject` shown on a `background` kind."""
    return Attributes(shape=obj.shape, colour=obj.colour, texture=obj.texture, marker=obj.marker, background=background)


def caption(attributes: Attributes, rng: np.random.Generator) -> str:
    """One caption of `attributes` in a phrasing drawn from `TEMPLATES` with `rng`."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(**attributes.words())


def zero_shot_prompts(attribute: str) -> dict[str, str]:
    """{value: prompt} for zero-shot classification of one attribute ("colour", "shape" or "texture")."""
    if attribute not in ZERO_SHOT_TEMPLATES:
        raise ValueError(f"attribute must be one of {tuple(ZERO_SHOT_TEMPLATES)}, got {attribute!r}")
    values = {"colour": {c: c for c in COLOUR_FAMILIES}, "shape": SHAPE_WORDS, "texture": TEXTURE_WORDS}[attribute]
    return {value: ZERO_SHOT_TEMPLATES[attribute].format(**{attribute: word}) for value, word in values.items()}


def _words(text: str) -> list[str]:
    # The tokenizer's pre-tokenisation: runs of word characters, or of punctuation.
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def caption_vocabulary() -> list[str]:
    """Every word a caption or zero-shot prompt can hold, sorted."""
    fillers = {name: "" for name in ATTRIBUTES}
    words = set()
    for template in TEMPLATES:
        words.update(_words(template.format(**fillers)))
    for vocabulary in (SHAPE_WORDS.values(), COLOUR_FAMILIES, TEXTURE_WORDS.values(), BACKGROUND_WORDS.values()):
        for word in vocabulary:
            words.update(_words(word))
    return sorted(words)


def longest_caption_tokens() -> int:
    """Tokens of the longest caption, [SOT] and [EOT] included (checks `CONTEXT_LENGTH`)."""
    values = {
        "shape": SHAPE_WORDS.values(), "colour": COLOUR_FAMILIES, "texture": TEXTURE_WORDS.values(),
        "marker": COLOUR_FAMILIES, "background": BACKGROUND_WORDS.values(),
    }
    longest = {name: max(words, key=lambda w: len(_words(w))) for name, words in values.items()}
    return max(len(_words(t.format(**longest))) for t in TEMPLATES) + 2


def build_caption_tokenizer(out_dir: str | PathLike) -> Path:
    """Write a word-level Hugging Face tokenizer over `caption_vocabulary` to `out_dir`.

    Ids: [PAD] 0, [SOT] 1, [UNK] 2, the words, then [EOT] as the largest id,
    because open_clip's text tower pools the token with the largest id
    (``text_pool_type="argmax"``, CLIP's end-of-text token). Loaded with
    `open_clip.tokenizer.HFTokenizer(out_dir, context_length=CONTEXT_LENGTH)`.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = caption_vocabulary()
    tokens = ["[PAD]", "[SOT]", "[UNK]", *words, "[EOT]"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[SOT] $A [EOT]", special_tokens=[("[SOT]", vocab["[SOT]"]), ("[EOT]", vocab["[EOT]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[SOT]", eos_token="[EOT]",
        model_max_length=CONTEXT_LENGTH,
    )
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out


def vocabulary_size() -> int:
    """Rows of the text tower's token embedding: the words plus `SPECIAL_TOKENS`."""
    return len(caption_vocabulary()) + len(SPECIAL_TOKENS)
