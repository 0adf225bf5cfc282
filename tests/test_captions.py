"""Captions of the synthetic world and the word-level caption tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from anydoor.data import captions
from anydoor.data.captions import (
    ATTRIBUTES,
    BACKGROUND_WORDS,
    COLOUR_FAMILIES,
    CONTEXT_LENGTH,
    SHAPE_WORDS,
    TEMPLATES,
    TEXTURE_WORDS,
    Attributes,
    caption,
    caption_vocabulary,
    colour_family,
    zero_shot_prompts,
)
from anydoor.data.synthetic import BACKGROUNDS, SHAPES, TEXTURES


@pytest.mark.parametrize(
    "rgb, family",
    [((255, 0, 0), "red"), ((255, 0, 40), "red"), ((255, 128, 0), "orange"), ((255, 230, 0), "yellow"),
     ((0, 200, 0), "green"), ((0, 200, 180), "teal"), ((0, 0, 255), "blue"), ((140, 0, 255), "purple"),
     ((255, 0, 200), "pink")],
)
def test_colour_family_by_hue(rgb, family):
    assert colour_family(rgb) == family


def test_every_generator_value_has_a_caption_word():
    assert set(SHAPE_WORDS) == set(SHAPES)
    assert set(TEXTURE_WORDS) == set(TEXTURES)
    assert set(BACKGROUND_WORDS) == set(BACKGROUNDS) | {"white"}


def test_every_attribute_is_named_by_some_template():
    for name in ATTRIBUTES:
        assert any("{" + name + "}" in t for t in TEMPLATES), name


def test_caption_is_deterministic_and_names_what_its_template_names():
    attrs = Attributes(shape="ellipse", colour="green", texture="stripes", marker="red", background="noise")
    assert caption(attrs, np.random.default_rng(3)) == caption(attrs, np.random.default_rng(3))
    rng = np.random.default_rng(0)
    seen = {caption(attrs, rng) for _ in range(200)}
    assert seen == {t.format(**attrs.words()) for t in TEMPLATES}  # every phrasing drawn
    assert "a green striped ellipse with a red marker on a noisy background" in seen


def test_attributes_refuse_unknown_values():
    with pytest.raises(ValueError, match="colour='grey'"):
        Attributes(shape="ellipse", colour="grey", texture="stripes", marker="red", background="noise")


def test_tokenizer_covers_every_caption_and_pools_at_the_largest_id(tmp_path):
    from open_clip.tokenizer import HFTokenizer

    tokenizer = HFTokenizer(str(captions.build_caption_tokenizer(tmp_path)), context_length=CONTEXT_LENGTH)
    vocabulary = caption_vocabulary()
    assert len(vocabulary) + 4 == captions.vocabulary_size()
    rng = np.random.default_rng(0)
    texts = []
    for shape in SHAPES:
        for colour in COLOUR_FAMILIES:
            attrs = Attributes(shape=shape, colour=colour, texture="dots", marker=colour, background="white")
            texts += [caption(attrs, rng) for _ in range(3)]
    texts += [p for a in ("colour", "shape", "texture") for p in zero_shot_prompts(a).values()]
    ids = tokenizer(texts)
    assert ids.shape == (len(texts), CONTEXT_LENGTH)
    unk, eot = 2, captions.vocabulary_size() - 1
    assert not (ids == unk).any()  # every word is in the vocabulary
    assert (ids.argmax(dim=1) == (ids > 0).sum(dim=1) - 1).all()  # the last token, [EOT], has the largest id
    assert (ids.max(dim=1).values == eot).all()
    assert captions.longest_caption_tokens() <= CONTEXT_LENGTH
    assert (tokenizer(["a photo of a zebra object"]) == unk).sum() == 1  # an unknown word is [UNK], not dropped


def test_zero_shot_prompts_name_one_value_each():
    prompts = zero_shot_prompts("colour")
    assert list(prompts) == list(COLOUR_FAMILIES)
    assert prompts["teal"] == "a photo of a teal object"
    with pytest.raises(ValueError, match="attribute must be one of"):
        zero_shot_prompts("marker")
