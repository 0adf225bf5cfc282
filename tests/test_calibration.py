"""The world backbones' calibration (eval/calibration.py) on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.calibration import derangement, retrieval_ranks, retrieval_scores


def test_retrieval_ranks_hand_computed():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # query 0 matches key 0 best; query 1 is nearest key 2 (rank 1 of its own key 1);
    # query 2 sits between key 0 and key 2, closer to key 0 (own key 2 at rank 1).
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.95, 0.31]])
    queries = torch.nn.functional.normalize(queries, dim=1)
    assert retrieval_ranks(queries, keys).tolist() == [0, 1, 1]
    scores = retrieval_scores(retrieval_ranks(queries, keys), floor_ranks=np.array([2, 2, 0]))
    assert scores["top1"]["mean"] == pytest.approx(1 / 3)
    assert scores["top5"]["mean"] == 1.0
    assert scores["top1_minus_floor"]["mean"] == pytest.approx(0.0)  # hits [1,0,0] minus floor hits [0,0,1]
    low, high = scores["top1"]["ci"]
    assert 0.0 <= low <= 1 / 3 <= high <= 1.0


def test_ties_count_against_the_query():
    # A constant embedding (a collapsed backbone) retrieves nothing, rather than everything.
    constant = torch.ones(4, 3) / 3**0.5
    assert retrieval_ranks(constant, constant).tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="same shape"):
        retrieval_ranks(constant, constant[:2])


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10, 256):
        perm = derangement(n, np.random.default_rng(0))
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()
    assert derangement(50, np.random.default_rng(1)).tolist() == derangement(50, np.random.default_rng(1)).tolist()
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1, np.random.default_rng(0))


def test_sanity_on_a_backbone_that_sees_colour(tmp_path):
    """An embedder of mean colour: the true target (same object, same colour) beats another object."""
    from eval.backbones import ImageEmbedder
    from eval.calibration import CalibrationCrops, sanity

    class MeanColour(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(()))  # ImageEmbedder reads the dtype off a parameter

        def forward(self, x):
            return self.gain * x.mean(dim=(2, 3))

    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10)]
    crops = [np.full((8, 8, 3), c, np.uint8) for c in colours]
    # a and d share a colour family by their attributes (the embedder sees different colours).
    data = CalibrationCrops(pair_ids=list("abcd"), references=crops, targets=crops, blurred_targets=crops,
                            attributes=[{"colour": "red"}, {"colour": "green"}, {"colour": "blue"}, {"colour": "red"}])
    embedder = ImageEmbedder(MeanColour(), "clip", "mean-colour", 8, (0, 0, 0), (1, 1, 1), source="in-world")
    result = sanity(embedder, data)
    assert result["true_target"]["mean"] == pytest.approx(100.0)
    assert result["true_minus_other"]["mean"] > 10.0 and result["true_minus_other"]["ci"][0] > 0
    assert result["true_minus_blurred"]["mean"] == pytest.approx(0.0, abs=1e-4)
    # Only a and d have a same-family other: the cosine of (250, 10, 10) and (250, 250, 10), x100, both ways.
    u, v = np.array([250.0, 10, 10]), np.array([250.0, 250, 10])
    expected = 100 * u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    assert result["same_family_other"]["mean"] == pytest.approx(expected, rel=1e-4)
    assert result["true_minus_same_family"]["mean"] == pytest.approx(100 - expected, rel=1e-4)
