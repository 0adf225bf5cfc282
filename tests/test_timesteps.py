"""Training timestep samplers: uniform and AnyDoor's adaptive timestep sampling (ATS)."""

import pytest
import torch

from anydoor.training.timesteps import ATS_UNIFORM_PROB, TIMESTEP_SCHEMES, sample_timesteps

N = 20000
# Binomial proportions over N draws: 5 standard deviations of p = 0.5 is 0.018.
TOL = 0.02


def draw(kinds, scheme, seed=0, **kwargs):
    return sample_timesteps(kinds, scheme, torch.Generator().manual_seed(seed), **kwargs)


def test_uniform_covers_the_schedule_evenly():
    t = draw(["video"] * N, "uniform")
    assert t.dtype == torch.int64 and t.shape == (N,)
    assert t.min() >= 0 and t.max() <= 999
    quarters = torch.bincount(t // 250, minlength=4).float() / N
    assert torch.allclose(quarters, torch.full((4,), 0.25), atol=TOL)


@pytest.mark.parametrize(
    "kind, inside, lo, hi",
    [
        # P(in the kind's range) = 0.7 + 0.3 * (range width / 1000)
        ("video", lambda t: t >= 500, 500, 1000),
        ("image", lambda t: t < 500, 0, 500),
    ],
)
def test_ats_ranges_and_proportions(kind, inside, lo, hi):
    t = draw([kind] * N, "ats")
    assert t.min() >= 0 and t.max() <= 999
    expected = (1 - ATS_UNIFORM_PROB) + ATS_UNIFORM_PROB * (hi - lo) / 1000
    assert expected == pytest.approx(0.85)
    assert inside(t).float().mean().item() == pytest.approx(expected, abs=TOL)
    # Inside its range the draw is uniform: both halves of the range equally likely.
    kept = t[(t >= lo) & (t < hi)]
    assert (kept < (lo + hi) // 2).float().mean().item() == pytest.approx(0.5, abs=TOL)


def test_ats_multiview_is_exactly_the_uniform_draw():
    """Both schemes consume the same draws, and multiview's range is the whole
    schedule, so the two agree sample by sample (common random numbers)."""
    assert torch.equal(draw(["multiview"] * 500, "ats", seed=3), draw(["multiview"] * 500, "uniform", seed=3))


def test_ats_matches_the_rule_computed_by_hand():
    kinds = ["video", "image", "multiview", "video", "image", "video", "image", "multiview"] * 4
    g = torch.Generator().manual_seed(7)
    coin = torch.rand(len(kinds), generator=g, dtype=torch.float64)
    position = torch.rand(len(kinds), generator=g, dtype=torch.float64)
    expected = []
    for kind, c, u in zip(kinds, coin.tolist(), position.tolist()):
        lo, hi = {"video": (500, 1000), "image": (0, 500), "multiview": (0, 1000)}[kind]
        if c < 0.3:
            lo, hi = 0, 1000
        expected.append(lo + int(u * (hi - lo)))
    assert draw(kinds, "ats", seed=7).tolist() == expected


def test_ats_on_a_short_schedule():
    t = draw(["video"] * 2000, "ats", num_train_timesteps=10)
    assert set(t.tolist()) == set(range(10))
    assert (t >= 5).float().mean().item() == pytest.approx(0.85, abs=0.04)


def test_deterministic_and_seed_dependent_and_aligned():
    kinds = ["video", "image"] * 16
    assert torch.equal(draw(kinds, "ats", seed=1), draw(kinds, "ats", seed=1))
    assert not torch.equal(draw(kinds, "ats", seed=1), draw(kinds, "ats", seed=2))
    # Every scheme advances the generator by the same amount.
    states = []
    for scheme in TIMESTEP_SCHEMES:
        g = torch.Generator().manual_seed(0)
        sample_timesteps(kinds, scheme, g)
        states.append(g.get_state())
    assert all(torch.equal(states[0], s) for s in states)


def test_empty_batch():
    assert draw([], "ats").shape == (0,)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(scheme="linear"), ValueError, "scheme must be one of"),
        (dict(kinds=["video", "sketch"]), ValueError, "sketch"),
        (dict(kinds="video"), TypeError, "kinds must be a sequence"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(num_train_timesteps=1), ValueError, "num_train_timesteps"),
        (dict(num_train_timesteps=1000.0), ValueError, "num_train_timesteps"),
    ],
)
def test_bad_input(kwargs, error, message):
    args = dict(kinds=["video"], scheme="ats", generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=message):
        sample_timesteps(**{**args, **kwargs})
