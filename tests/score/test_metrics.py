"""Metric math against torch-fidelity's own functions and hand-checked constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagenet_plus.score import metrics as metrics

torch.set_num_threads(2)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_clip_score_is_100_max_cos_zero():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    txt = np.array([[1.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
    got = metrics.clip_score(img, txt)
    np.testing.assert_allclose(got, [100 / np.sqrt(2), 0.0, 100.0], rtol=1e-12)
    # random case against the definition, embeddings not normalised
    a, b = _rng().normal(size=(50, 8)), _rng(1).normal(size=(50, 8))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(metrics.clip_score(a, b), 100 * np.clip(cos, 0, None), rtol=1e-10)
    assert (metrics.clip_score(a, b) == 0).any() and (metrics.clip_score(a, b) > 0).any()


def test_zero_shot_probability_and_rank():
    classes = np.eye(3)
    img = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.5], [0.0, 0.0, 1.0]])
    prob, rank = metrics.zero_shot(img, classes, [0, 2, 1], logit_scale=10.0)
    logits = 10 * (img / np.linalg.norm(img, axis=1, keepdims=True))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(prob, soft[[0, 1, 2], [0, 2, 1]], rtol=1e-10)
    assert rank.tolist() == [1, 2, 2]  # last: class 2 beats it, class 0 ties (ties share the better rank)


def test_isc_kl_mean_exp_is_inception_score_with_one_split():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.from_numpy(_rng().normal(0, 3, size=(40, 1008)).astype(np.float32))
    marginal = metrics.isc_probability_sum(logits[:25]) + metrics.isc_probability_sum(logits[25:])  # two shards
    kl = metrics.isc_kl(logits, marginal / 40)
    expected = isc_features_to_metric(logits, splits=1)["inception_score_mean"]
    assert np.exp(kl.mean()) == pytest.approx(expected, rel=1e-9)
    assert (kl >= -1e-12).all() and kl.std() > 0
    mean, std = metrics.inception_score(logits, splits=4)
    assert mean == pytest.approx(isc_features_to_metric(logits, splits=4)["inception_score_mean"], rel=1e-12)
    assert std > 0


def test_fid_kid_precision_recall_equal_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    a = torch.from_numpy(_rng().normal(0, 1, size=(60, 16)).astype(np.float32))
    b = torch.from_numpy(_rng(1).normal(0.3, 1.2, size=(50, 16)).astype(np.float32))
    expected = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert metrics.fid(a, b) == pytest.approx(expected["frechet_inception_distance"], rel=1e-6)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-3)
    kid = kid_features_to_metric(a, b, kid_subsets=20, kid_subset_size=50, verbose=False)
    assert metrics.kid(a, b, subset_size=1000, subsets=20) == pytest.approx(
        (kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]), rel=1e-9)
    p, r = calculate_precision_recall_full(a, b, neighborhood=3)
    assert metrics.precision_recall(a, b) == pytest.approx((p, r))
    # statistics read from a file may be float64: dtypes are aligned before torch-fidelity's asserts
    stat64 = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.fid_statistics(b).items()}
    assert metrics.fid_from_statistics(metrics.fid_statistics(a), stat64) == pytest.approx(
        expected["frechet_inception_distance"], rel=1e-6)


def test_fid_small_set_equals_torch_fidelity_fid():
    a = _rng(2).normal(0, 1, size=(12, 64)).astype(np.float32)
    b = _rng(3).normal(0.2, 1.1, size=(90, 64)).astype(np.float32)
    assert metrics.fid_small_set(a, b) == pytest.approx(metrics.fid(a, b), rel=1e-6)
    assert metrics.fid_small_set(b, a) == pytest.approx(metrics.fid(b, a), rel=1e-9)  # n > D: the same function


def test_realism_score_constructed_case():
    # Real points on a line at 0, 1, 2, 10: 1-NN radii are 1, 1, 1, 8.
    real = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    gen = np.array([[0.5, 0.0], [1.0, 3.0], [10.0, 2.0], [100.0, 0.0]])
    got = metrics.realism_scores(gen, real, neighborhood=1, prune=False)
    # g=(0.5,0): max(1/0.5, 1/0.5, 1/1.5, 8/9.5) = 2; g=(1,3): max(1/sqrt10, 1/3, 1/sqrt10, 8/sqrt(81+9)) = 8/sqrt90
    # g=(10,2): 8/2 = 4; g=(100,0): max(1/100, 1/99, 1/98, 8/90) = 8/90
    np.testing.assert_allclose(got, [2.0, 8 / np.sqrt(90), 4.0, 8 / 90], rtol=1e-6)
    # pruning drops the half with the largest radii (the outlier at 10): its ball no longer counts
    pruned = metrics.realism_scores(gen, real, neighborhood=1, prune=True)
    np.testing.assert_allclose(pruned[0], 1 / 0.5, rtol=1e-6)
    np.testing.assert_allclose(pruned[2], 1 / np.sqrt(81 + 4), rtol=1e-6)  # 2 of 4 balls kept: at 0 and 1


def test_vendi_score_bounds():
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1))
    assert metrics.vendi_score(same) == pytest.approx(1.0, rel=1e-9)
    assert metrics.vendi_score(np.eye(6)) == pytest.approx(6.0, rel=1e-9)
    two = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert metrics.vendi_score(two) == pytest.approx(2.0, rel=1e-9)
    many = _rng().normal(size=(200, 4))  # n > d uses the d×d matrix: same eigenvalues
    k = (many / np.linalg.norm(many, axis=1, keepdims=True))
    lam = np.clip(np.linalg.eigvalsh(k @ k.T / 200), 1e-15, None)
    assert metrics.vendi_score(many) == pytest.approx(np.exp(-(lam * np.log(lam)).sum()), rel=1e-6)


def test_near_duplicates_point_at_first_member():
    emb = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.999, 0.02, 0.0], [0.0, 0.0, 1.0], [1.0, 0.01, 0.0],
                    [0.9, 0.43, 0.0]])
    keys = ["a", "b", "c", "d", "e", "f"]
    assert metrics.near_duplicates(emb, keys) == [None, None, "a", None, "a", None]
    assert metrics.near_duplicates(emb, keys, threshold=0.89) == [None, None, "a", None, "a", "a"]
    assert metrics.near_duplicates(emb, keys, batch_size=2) == [None, None, "a", None, "a", None]


def test_running_moments_equal_torch_fidelity_statistics():
    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = (_rng(4).normal(3.0, 2.0, size=(1003, 48)) * np.linspace(0.1, 3, 48)).astype(np.float16)
    moments = metrics.RunningMoments(48, chunk_rows=97)
    for part in np.split(feats, [10, 11, 500]):  # uneven chunks, one of a single row
        moments.update(part)
    got = moments.statistics()
    expected = fid_features_to_statistics(torch.from_numpy(feats.astype(np.float32)))
    np.testing.assert_allclose(got["mu"], expected["mu"], rtol=1e-6)
    np.testing.assert_allclose(got["sigma"], expected["sigma"], rtol=1e-5, atol=1e-6 * np.abs(expected["sigma"]).max())
    other = metrics.fid_statistics(_rng(5).normal(3.1, 2.0, size=(200, 48)).astype(np.float32))
    assert metrics.fid_from_statistics(got, other) == pytest.approx(metrics.fid_from_statistics(expected, other),
                                                                    rel=1e-6)


def test_streamed_inception_score_equals_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.from_numpy(_rng(6).normal(0, 3, size=(1003, 1008)).astype(np.float32))
    for splits, cuts in ((10, [1, 400, 401, 1000]), (3, [])):
        isc = metrics.InceptionScoreSplits(len(logits), 1008, splits=splits)
        chunks = np.split(np.arange(len(logits)), cuts)
        for rows in chunks:
            isc.add_probabilities(int(rows[0]), logits[rows].numpy())
        kl = np.concatenate([isc.add_kl(int(rows[0]), logits[rows].numpy()) for rows in chunks])
        np.testing.assert_allclose(kl, metrics.isc_kl(logits, isc.marginal()), rtol=1e-9, atol=1e-12)
        expected = isc_features_to_metric(logits, splits=splits)
        assert isc.score() == pytest.approx((expected["inception_score_mean"], expected["inception_score_std"]),
                                            rel=1e-9)
    np.testing.assert_allclose(isc.marginal(), logits.double().softmax(1).mean(0).numpy(), rtol=1e-12)
    tiny = metrics.InceptionScoreSplits(3, 1008)  # fewer rows than splits: one row per split, as inception_score
    tiny.add_probabilities(0, logits[:3].numpy())
    tiny.add_kl(0, logits[:3].numpy())
    assert tiny.score() == pytest.approx(metrics.inception_score(logits[:3]), rel=1e-9, abs=1e-12)


def test_blocked_knn_precision_recall_and_realism_equal_torch_fidelity(monkeypatch):
    from torch_fidelity.metric_prc import calculate_precision_recall_part, prc_features_to_metric

    gen = torch.from_numpy(_rng(7).normal(0, 1, size=(300, 32)).astype(np.float32))
    real = torch.from_numpy(_rng(8).normal(0.4, 1.1, size=(230, 32)).astype(np.float32))
    expected = prc_features_to_metric(gen, real, prc_neighborhood=3, prc_batch_size=64, save_cpu_ram=True,
                                      verbose=False)
    whole = metrics.precision_recall(gen, real)
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK_ELEMENTS", 230 * 7)  # blocks of 7 rows: many partial blocks
    blocked = metrics.precision_recall(gen, real)
    assert whole == blocked == pytest.approx((expected["precision"], expected["recall"]), abs=1e-12)
    assert 0 < blocked[0] < 1 and 0 < blocked[1] < 1
    assert calculate_precision_recall_part(gen, real, 5, 50) == pytest.approx(
        metrics.precision_recall(gen, real, neighborhood=5), abs=1e-12)
    radii = torch.cdist(real, real).kthvalue(4, dim=1).values
    torch.testing.assert_close(metrics.knn_radii(real), radii)
    # realism in blocks equals the dense definition
    centres, ball = metrics.realism_reference(real)
    dense = (ball[None, :] / torch.cdist(gen, centres)).max(dim=1).values.double().numpy()
    np.testing.assert_allclose(metrics.realism_from_balls(gen, centres, ball), dense, rtol=1e-6)
    np.testing.assert_allclose(metrics.realism_scores(gen, real, batch_size=13), dense, rtol=1e-6)


def test_fid_small_set_when_both_sets_are_small():
    a = _rng(9).normal(0, 1, size=(12, 64)).astype(np.float32)
    b = _rng(10).normal(0.2, 1.1, size=(20, 64)).astype(np.float32)
    assert metrics.fid_small_set(a, b) == pytest.approx(metrics.fid(a, b), rel=1e-6)
