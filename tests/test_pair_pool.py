"""The pool of prepared training pairs (anydoor.training.pair_pool)."""

import json

import pytest
import torch
from torch.utils.data import default_collate

from anydoor.training.pair_pool import PairPool, load_or_prepare_pool, pool_batches, prepare_pool
from tests.test_training import data, tiny_config, weights  # noqa: F401  (the module's data fixture)


def _parts(config):
    from anydoor.presets import tiny_components
    from anydoor.training.loop import _build_dataset

    components = tiny_components(seed=0, id_extractor=config.model.id_extractor, vae=None, unet=None,
                                 id_backbone="random")
    return _build_dataset(config, 64), components["vae"], components["id_extractor"]


def _pool_dir(out):
    (sub,) = [p for p in (out / "pair_pool").iterdir() if p.is_dir()]
    return sub


def test_cached_moments_and_features_equal_a_fresh_prepare(data, tmp_path):
    config = tiny_config(data, tmp_path, "pair_pool=6")
    dataset, vae, id_extractor = _parts(config)
    pool = prepare_pool(dataset, 6, vae, id_extractor, progress=False)
    assert len(pool) == 6 and pool.moments.shape == (6, 8, 16, 16) and pool.hint.shape == (6, 4, 64, 64)
    # Item k of the pool is item k mod len of epoch k // len of the training stream.
    n = len(dataset)
    items = []
    for k in (0, 5):
        dataset.set_epoch(k // n)
        items.append(dataset[k % n])
    batch = default_collate(items)
    with torch.no_grad():
        fresh = vae.encode(batch["target"]).latent_dist
        tokens = id_extractor(batch["reference"])
    torch.testing.assert_close(pool.moments[[0, 5]], fresh.parameters, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool.hint[[0, 5]], batch["hint"], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(id_extractor.project(pool.features[[0, 5]]), tokens, rtol=1e-5, atol=1e-6)
    assert pool.kinds[0] == items[0]["kind"]


def test_save_load_round_trip_and_build_once(tmp_path):
    pool = PairPool(torch.randn(4, 8, 2, 2), torch.randn(4, 4, 8, 8), torch.randn(4, 3, 5), ["video", "image"] * 2,
                    key="k1")
    calls = []

    def build(key):
        calls.append(key)
        return pool

    first = load_or_prepare_pool(tmp_path, "k1", build)
    again = load_or_prepare_pool(tmp_path, "k1", build)
    assert calls == ["k1"]
    assert torch.equal(again.moments, first.moments) and again.kinds == pool.kinds
    # A folder whose content has another key is refused, not silently used.
    meta = tmp_path / "k1" / "pool.json"
    meta.write_text(json.dumps({"key": "other", "kinds": pool.kinds}))
    with pytest.raises(ValueError, match="holds key 'other', expected 'k1'"):
        load_or_prepare_pool(tmp_path, "k1", build)


def test_pool_order_is_fixed_by_seed_and_covers_every_pair():
    pool = PairPool(torch.arange(10.0).view(10, 1, 1, 1), torch.zeros(10, 4, 1, 1), torch.zeros(10, 1, 1),
                    ["image"] * 10)
    def read(seed, epochs=2):
        stream = pool_batches(pool, seed, 3, 0, 1, 0, 0)
        return [(e, [int(x) for x in b["moments"].flatten()]) for e, _, b in (next(stream) for _ in range(3 * epochs))]

    a, b, c = read(0), read(0), read(1)
    assert a == b and a != c
    first_epoch = [x for e, batch in a if e == 0 for x in batch]
    assert len(first_epoch) == 9 and len(set(first_epoch)) == 9  # 3 full batches, no pair twice
    # Resuming mid-epoch (items done = 6) continues the same sequence.
    resumed = pool_batches(pool, 0, 3, 0, 1, 0, 6)
    assert [int(x) for x in next(resumed)[2]["moments"].flatten()] == a[2][1]


def test_arms_sharing_a_key_share_the_pool_and_others_do_not(data, tmp_path):
    from anydoor.training import train

    shared = tmp_path / "pools"
    common = ["pair_pool=8", f"pair_pool_dir={shared}", "max_steps=2", "model.id_backbone=random"]
    ats = train(tiny_config(data, tmp_path / "ats", *common))
    uniform = train(tiny_config(data, tmp_path / "uniform", *common, "timestep_sampler=uniform"))
    rgb = train(tiny_config(data, tmp_path / "rgb", *common, "model.detail_map=rgb"))
    keys = sorted(p.name for p in shared.iterdir() if p.is_dir())
    assert len(keys) == 2  # ATS vs uniform: one pool; another detail map: its own
    pools = [PairPool.load(shared / k) for k in keys]
    assert not torch.equal(pools[0].hint, pools[1].hint)
    # The target crops do not depend on the detail map: the same posterior moments.
    torch.testing.assert_close(pools[0].moments, pools[1].moments)
    assert all(r.step == 2 and torch.isfinite(torch.tensor(r.loss)) for r in (ats, uniform, rgb))


def test_pool_training_resumes_bit_identically(data, tmp_path):
    from anydoor.training import train

    common = ["pair_pool=6", "checkpoint_every=1", "model.id_backbone=random"]
    whole = train(tiny_config(data, tmp_path / "a", "max_steps=4", *common))
    train(tiny_config(data, tmp_path / "b", "max_steps=2", *common))
    resumed = train(tiny_config(data, tmp_path / "b", "max_steps=4", *common), resume=True)
    a, b = weights(whole.pipeline_dir), weights(resumed.pipeline_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pool_smaller_than_a_batch_is_refused(data, tmp_path):
    from anydoor.training import train

    with pytest.raises(ValueError, match=r"pair_pool=1 pairs is fewer than one batch \(batch_size=2\)"):
        train(tiny_config(data, tmp_path, "pair_pool=1", "max_steps=1", "model.id_backbone=random"))
