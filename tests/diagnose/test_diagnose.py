"""Per-class diagnosis on constructed CLIP embeddings whose answers are known, geometry against direct numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagenet_plus.contract import RunPaths, score_table
from imagenet_plus.contract.diagnosis import CENTROIDS_CLASS_IDS, CENTROIDS_REAL, CENTROIDS_SYNTHETIC
from imagenet_plus.contract.scores import ModelsRecord
from imagenet_plus.diagnose.config import DiagnoseConfig
from imagenet_plus.diagnose.stage import read_remedy_strategies, run_diagnose
from imagenet_plus.errors import UserError

DIM = 16
PER_CLASS = 20
#: label → (id, name); names are not English words (no WordNet senses) except the shared "crane".
CLASSES = [("clean-a", "zorblax"), ("crane-bird", "crane"), ("crane-machine", "crane"), ("samey", "quuxite"),
           ("wrong", "flimbat"), ("clean-b", "glorp")]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _basis(i: int, dim: int = DIM) -> np.ndarray:
    e = np.zeros(dim)
    e[i] = 1.0
    return e


def _cluster(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float = 0.3) -> np.ndarray:
    return _unit(centre + rng.normal(0, noise, (n, len(centre))))


def constructed(rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Text embeddings, synthetic and real embeddings per class, built so each class has one known failure."""
    text = np.stack([_basis(i) for i in range(len(CLASSES))])
    text[1] = text[2] = _unit(_basis(1) + _basis(2))  # the same text for both cranes
    syn = {
        0: _cluster(rng, _basis(0), PER_CLASS),
        1: np.concatenate([_cluster(rng, _basis(1), PER_CLASS // 2), _cluster(rng, _basis(2), PER_CLASS // 2)]),
        2: np.concatenate([_cluster(rng, _basis(2), PER_CLASS // 2), _cluster(rng, _basis(1), PER_CLASS // 2)]),
        3: np.tile(_basis(3), (PER_CLASS, 1)),  # every image the same embedding
        4: _cluster(rng, _basis(5), PER_CLASS),  # draws class 5 instead of itself
        5: _cluster(rng, _basis(5), PER_CLASS),
    }
    real = {c: _cluster(rng, _basis(c), 12) for c in range(len(CLASSES))}
    return text, syn, real


def write_scored_run(root: Path, text: np.ndarray, syn: dict[int, np.ndarray], shards: int = 2,
                     clip_model: str = "tiny-random", prob: float = 0.9) -> Path:
    """A run folder holding only what ``score`` writes (rows spread over ``shards`` shards, interleaved)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.yaml").write_text("config: {}\n")
    records = [{"label": i, "id": cid, "name": name, "lemmas": [name], "definition": "", "hypernym": "", "group": ""}
               for i, (cid, name) in enumerate(CLASSES[: len(text)])]
    (root / "classes.json").write_text(json.dumps(records))
    paths = RunPaths(root)
    paths.scores.mkdir()
    rows = [(c, i, e) for c, embs in syn.items() for i, e in enumerate(embs)]
    for s in range(shards):
        mine = rows[s::shards]
        n = len(mine)
        cols = {
            "key": [f"{records[c]['id']}_{i:06d}" for c, i, _ in mine], "label": [c for c, _, _ in mine],
            "class_id": [records[c]["id"] for c, _, _ in mine], "clip_score": [30.0] * n,
            "clip_class_score": [25.0] * n, "clip_class_prob": [prob] * n, "clip_class_rank": [1] * n,
            "isc_kl": [1.0] * n, "classifier_top1": [None] * n, "classifier_top5": [None] * n,
            "classifier_prob": [None] * n, "realism": [None] * n,
            "nsfw_score": [None] * n, "dup_of": [None] * n, "nsfw": [False] * n,
            "attempt": [0] * n, "strategy": ["name"] * n,
        }
        import pyarrow.parquet as pq

        files = paths.score_files(f"{s:05d}")
        pq.write_table(score_table(cols), files.parquet)
        np.save(files.clip, np.asarray([e for _, _, e in mine], dtype=np.float16))
    np.save(paths.class_text_embeddings, text.astype(np.float16))
    ModelsRecord(clip=clip_model, inception_weights="tiny-random", classifier="tiny-random",
                 nsfw_detector="none").write(paths.models_json)
    paths.summary_json.write_text("{}")  # what diagnose checks of it: that it exists
    return root


def write_npz_reference(path: Path, real: dict[int, np.ndarray], ids: list[str] | None = None) -> Path:
    ids = ids or [cid for cid, _ in CLASSES]
    np.savez(path, clip=np.concatenate([real[c] for c in sorted(real)]).astype(np.float32),
             class_ids=np.array([ids[c] for c in sorted(real) for _ in range(len(real[c]))]))
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, dict, dict]:
    rng = np.random.default_rng(0)
    text, syn, real = constructed(rng)
    root = tmp_path_factory.mktemp("diag")
    return write_scored_run(root / "run", text, syn), text, syn, real


def _verdicts(run: Path) -> dict[str, str]:
    import pandas as pd

    frame = pd.read_parquet(RunPaths(run).diagnosis_parquet)
    return dict(zip(frame["class_id"], frame["verdict"], strict=True))


def test_constructed_failures_with_a_reference(scored, tmp_path: Path):
    run, _text, _syn, real = scored
    ref = write_npz_reference(tmp_path / "real.npz", real)
    summary = run_diagnose(run, DiagnoseConfig(reference=str(ref)))
    assert _verdicts(run) == {"clean-a": "ok", "crane-bird": "ambiguous", "crane-machine": "ambiguous",
                              "samey": "low-diversity", "wrong": "concept-failure", "clean-b": "ok"}
    import pandas as pd

    frame = pd.read_parquet(RunPaths(run).diagnosis_parquet).set_index("class_id")
    assert frame.loc["crane-bird", "shared_with"] == "crane-machine"
    assert frame.loc["crane-bird", "confusion_share"] == 1.0  # identical texts: every image ties
    assert frame.loc["wrong", "nearest_real_class"] == "clean-b" and frame.loc["wrong", "confused_with"] == "clean-b"
    assert frame.loc["samey", "vendi"] == pytest.approx(1.0, abs=1e-3)
    assert frame.loc["clean-a", "flags"] == "" and pd.isna(frame.loc["clean-a", "strategy"])
    assert summary.verdict_counts == {"ambiguous": 2, "concept-failure": 1, "low-diversity": 1,
                                      "low-adherence": 0, "ok": 2}
    assert [f.class_id for f in summary.flagged_classes][:2] == ["crane-bird", "crane-machine"]
    assert summary.note is None and summary.geometry.real_images == 12 * len(CLASSES)
    assert read_remedy_strategies(run) == {"crane-bird": "gloss", "crane-machine": "gloss", "samey": "diverse"}
    json.loads(RunPaths(run).diagnosis_json.read_text())  # strict JSON (no NaN)


def test_constructed_failures_without_a_reference(scored):
    run = scored[0]
    summary = run_diagnose(run, DiagnoseConfig())
    assert _verdicts(run) == {"clean-a": "ok", "crane-bird": "ambiguous", "crane-machine": "ambiguous",
                              "samey": "low-diversity", "wrong": "concept-failure", "clean-b": "ok"}
    assert "no real reference" in summary.note and summary.geometry.centroid_cosine is None
    import pandas as pd

    frame = pd.read_parquet(RunPaths(run).diagnosis_parquet)
    assert frame["real_vendi"].isna().all() and frame["centroid_cosine"].isna().all()


def test_thresholds_are_configurable(scored):
    run = scored[0]
    run_diagnose(run, DiagnoseConfig(max_confusion=1.0, min_vendi=1.0, max_pairwise_similarity=1.0,
                                     min_class_prob=0.95))
    verdicts = _verdicts(run)
    assert verdicts["crane-bird"] == "ambiguous"  # 1.0 ≥ 1.0 still
    assert verdicts["samey"] == "low-adherence" and verdicts["clean-a"] == "low-adherence"  # 0.9 < 0.95
    with pytest.raises(UserError, match="max_confusion"):
        DiagnoseConfig(max_confusion=1.5)


def test_geometry_matches_direct_numpy(scored, tmp_path: Path):
    import pandas as pd

    run, text, syn, real = scored
    run_diagnose(run, DiagnoseConfig(reference=str(write_npz_reference(tmp_path / "r.npz", real)),
                                     sample_per_class=PER_CLASS))
    frame = pd.read_parquet(RunPaths(run).diagnosis_parquet)
    t = text.astype(np.float16).astype(np.float64)
    for c in range(len(CLASSES)):
        x = syn[c].astype(np.float16).astype(np.float64)  # what the .clip.npy holds
        r = real[c].astype(np.float32).astype(np.float64)
        mu, mu_r = x.mean(0), r.mean(0)
        row = frame.iloc[c]
        assert row["centroid_cosine"] == pytest.approx(mu @ mu_r / np.linalg.norm(mu) / np.linalg.norm(mu_r),
                                                       abs=1e-9)
        assert row["spread"] == pytest.approx(np.sqrt(np.mean(np.sum((x - mu) ** 2, axis=1))), abs=1e-6)
        assert row["real_spread"] == pytest.approx(np.sqrt(np.mean(np.sum((r - mu_r) ** 2, axis=1))), abs=1e-6)
        gram = x @ x.T
        off = gram[~np.eye(len(x), dtype=bool)]
        assert row["mean_pairwise_similarity"] == pytest.approx(off.mean(), abs=1e-6)
        assert row["modality_gap"] == pytest.approx(np.linalg.norm(mu - t[c]), abs=1e-9)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        lam = np.linalg.eigvalsh(xn @ xn.T / len(xn))  # the n×n kernel (the code uses the D×D one)
        lam = lam[lam > 1e-12]
        assert row["vendi"] == pytest.approx(np.exp(-np.sum(lam * np.log(lam))), rel=1e-4)
    geo = json.loads(RunPaths(run).diagnosis_json.read_text())["geometry"]
    all_x = np.concatenate([syn[c].astype(np.float16).astype(np.float64) for c in range(len(CLASSES))])
    all_r = np.concatenate([real[c].astype(np.float32).astype(np.float64) for c in range(len(CLASSES))])
    texts = np.concatenate([np.tile(t[c], (len(syn[c]), 1)) for c in range(len(CLASSES))])
    m, mr = all_x.mean(0), all_r.mean(0)
    assert geo["centroid_cosine"] == pytest.approx(m @ mr / np.linalg.norm(m) / np.linalg.norm(mr), abs=1e-9)
    assert geo["spread"] == pytest.approx(np.sqrt(np.mean(np.sum((all_x - m) ** 2, axis=1))), abs=1e-6)
    assert geo["modality_gap"] == pytest.approx(np.linalg.norm(m - texts.mean(0)), abs=1e-9)


def test_sample_is_independent_of_shard_layout(tmp_path: Path):
    import pandas as pd

    rng = np.random.default_rng(1)
    text, syn, _ = constructed(rng)
    frames = []
    for shards in (1, 3):
        run = write_scored_run(tmp_path / f"run{shards}", text, syn, shards=shards)
        run_diagnose(run, DiagnoseConfig(sample_per_class=5))
        frames.append(pd.read_parquet(RunPaths(run).diagnosis_parquet))
    assert np.allclose(frames[0]["vendi"], frames[1]["vendi"], equal_nan=True)
    assert np.allclose(frames[0]["spread"], frames[1]["spread"])


def test_bad_input_is_one_line(scored, tmp_path: Path):
    from typer.testing import CliRunner

    from imagenet_plus.cli import app

    run, _text, _syn, real = scored
    unscored = tmp_path / "unscored"
    unscored.mkdir()
    (unscored / "run.yaml").write_text("config: {}\n")
    with pytest.raises(UserError, match="run 'imagenet-plus score' first"):
        run_diagnose(unscored)
    ids = [cid for cid, _ in CLASSES]
    bad = write_npz_reference(tmp_path / "bad.npz", {0: real[0]}, ids=["n99999999", *ids[1:]])
    with pytest.raises(UserError, match="n99999999"):
        run_diagnose(run, DiagnoseConfig(reference=str(bad)))
    folder = tmp_path / "real"
    (folder / "not-in-run").mkdir(parents=True)
    with pytest.raises(UserError, match="not-in-run"):
        run_diagnose(run, DiagnoseConfig(reference=str(folder)))
    result = CliRunner().invoke(app, ["diagnose", str(unscored)])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert "\n" not in result.exception.message and "score" in result.exception.message


@pytest.mark.slow
def test_image_folder_reference_is_embedded_with_the_run_clip_and_cached(tmp_path: Path, monkeypatch):
    from PIL import Image

    import imagenet_plus.diagnose.inputs as inputs
    from imagenet_plus.pipeline import freshness

    rng = np.random.default_rng(2)
    dim = 32  # the tiny CLIP's embedding size
    text = np.stack([_basis(i, dim) for i in range(2)])
    syn = {c: _cluster(rng, _basis(c, dim), 6) for c in range(2)}
    run = write_scored_run(tmp_path / "run", text, syn)
    folder = tmp_path / "real"
    for cid, _ in CLASSES[:2]:
        (folder / cid).mkdir(parents=True)
        for i, suffix in enumerate(("jpg", "png", "bmp")):  # every suffix of contract.READ_IMAGE_EXTENSIONS reads
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / cid / f"{i}.{suffix}")
    cfg = DiagnoseConfig(reference=str(folder), device="cpu")
    first = run_diagnose(run, cfg)
    assert first.geometry.real_images == 6
    assert len(list(RunPaths(run).diagnosis_cache.glob("reference-*.npz"))) == 1

    def no_model(*args, **kwargs):  # the second run must read the cache, not embed again
        raise AssertionError("reference embedded twice")

    monkeypatch.setattr(inputs, "ClipScorer", no_model)
    assert run_diagnose(run, cfg) == first  # current: nothing is read again
    freshness.forget(RunPaths(run), ["diagnose"])  # not current: diagnosed again, the reference from the cache
    assert run_diagnose(run, cfg).geometry == first.geometry
    (folder / CLASSES[0][0] / "0.jpg").unlink()  # a changed reference folder: not current, embedded again
    with pytest.raises(AssertionError, match="reference embedded twice"):
        run_diagnose(run, cfg)


def test_centroids_file_matches_direct_means_and_has_real_only_with_a_reference(tmp_path: Path):
    rng = np.random.default_rng(3)
    text, syn, real = constructed(rng)
    del syn[4]  # a class without images: a NaN row
    run = write_scored_run(tmp_path / "run", text, syn)
    paths = RunPaths(run)
    run_diagnose(run, DiagnoseConfig())
    with np.load(paths.diagnosis_centroids, allow_pickle=False) as data:
        assert sorted(data.files) == sorted([CENTROIDS_CLASS_IDS, CENTROIDS_SYNTHETIC])
        assert list(data[CENTROIDS_CLASS_IDS]) == [cid for cid, _ in CLASSES]
        got = data[CENTROIDS_SYNTHETIC]
    assert got.dtype == np.float32 and got.shape == (len(CLASSES), DIM)
    for c in range(len(CLASSES)):
        if c not in syn:
            assert np.isnan(got[c]).all()
            continue
        x = syn[c].astype(np.float16).astype(np.float64)  # the normalised embeddings the .clip.npy holds
        np.testing.assert_allclose(got[c], x.mean(axis=0), atol=1e-6)
    run_diagnose(run, DiagnoseConfig(reference=str(write_npz_reference(tmp_path / "r.npz", real))))
    with np.load(paths.diagnosis_centroids, allow_pickle=False) as data:
        assert sorted(data.files) == sorted([CENTROIDS_CLASS_IDS, CENTROIDS_REAL, CENTROIDS_SYNTHETIC])
        np.testing.assert_array_equal(data[CENTROIDS_SYNTHETIC], got)
        for c in range(len(CLASSES)):
            np.testing.assert_allclose(data[CENTROIDS_REAL][c], real[c].astype(np.float32).astype(np.float64).mean(0),
                                       atol=1e-6)
