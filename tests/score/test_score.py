"""The score stage end to end on a fake run with the tiny-random scorers (real architectures)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAKE_CLASSES, write_fake_run
from PIL import Image

import imagenet_plus.score.dataset_pass as dataset_pass
from imagenet_plus.contract import SCORE_COLUMNS, RunPaths
from imagenet_plus.contract.scores import ScoreSummary
from imagenet_plus.errors import UserError
from imagenet_plus.score.config import ScoreConfig, load_score_config
from imagenet_plus.score.stage import run_score

torch.set_num_threads(2)

TINY = dict(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random",
            nsfw_model="tiny-random")
TINY_FLAGS = ["--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier", "tiny-random",
              "--nsfw-model", "tiny-random"]


def _reference_folder(root: Path, per_class: int) -> Path:
    """Real-image stand-in: wnid subfolders, PNGs of another size than the run's images."""
    rng = np.random.default_rng(1)
    for c in FAKE_CLASSES:
        (root / c["id"]).mkdir(parents=True)
        for i in range(per_class):
            colour = np.array([(c["label"] * 97 + 30) % 256, (c["label"] * 57 + 60) % 256, (c["label"] * 31) % 256])
            img = np.clip(colour + rng.normal(0, 50, (40, 56, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c["id"] / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A 9-image run in 3 shards (4 + 4 + 1), scored against a 9-image per-class reference."""
    base = tmp_path_factory.mktemp("scored")
    run = write_fake_run(base / "run", per_class=3, shard_size=4, size=48)
    ref = _reference_folder(base / "ref", per_class=3)
    cfg = ScoreConfig(reference=str(ref), batch_size=5, **TINY)
    summary = run_score(run, cfg)
    return run, ref, cfg, summary


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_scores_follow_the_contract(scored):
    run, _ref, _cfg, summary = scored
    scores = run / "scores"
    stems = ["00000", "00001", "00002"]
    assert summary.shards == stems and summary.bad_shards == [] and summary.num_images == 9
    for value in (summary.fid, summary.kid_mean, summary.kid_std, summary.inception_score_mean,
                  summary.inception_score_std, summary.clip_score_mean, summary.precision, summary.recall):
        assert value is not None and np.isfinite(value)
    assert summary.models.clip == "tiny-random" and summary.reference["kind"] == "folder"
    assert summary.reference["per_class"] is True
    for c in FAKE_CLASSES:
        entry = summary.per_class[c["id"]]
        assert entry.count == 3 and entry.fid is not None and 1.0 <= entry.vendi <= 3.0
        assert entry.classifier_top1_rate is not None
    texts = np.load(scores / "class_text_embeddings.npy")
    assert texts.dtype == np.float16 and texts.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(texts.astype(np.float32), axis=1), 1.0, atol=2e-3)
    keys = []
    for stem in stems:
        df = pd.read_parquet(scores / f"{stem}.parquet")
        assert list(df.columns) == list(SCORE_COLUMNS)
        inc, clip = np.load(scores / f"{stem}.inception.npy"), np.load(scores / f"{stem}.clip.npy")
        assert inc.dtype == np.float16 and inc.shape == (len(df), 2048)
        assert clip.dtype == np.float16 and clip.shape[0] == len(df)
        assert np.load(scores / f"{stem}.logits.npy").shape == (len(df), 1008)
        assert df["isc_kl"].notna().all() and df["realism"].notna().all()
        assert df["classifier_top1"].notna().all() and df["classifier_prob"].between(0, 1).all()
        assert df["clip_class_rank"].between(1, 3).all() and df["clip_class_prob"].between(0, 1).all()
        assert df["nsfw"].dtype == bool and (df["attempt"] == 0).all()
        assert set(df["dup_of"].dropna()) <= set(df["key"]) | set(keys) | {k for k in _all_keys(run)}
        keys += df["key"].tolist()
    assert keys == sorted(_all_keys(run)) == _all_keys(run)
    assert not list(scores.glob("*.partial"))


def _all_keys(run: Path) -> list[str]:
    from imagenet_plus.io.tar import iter_shard

    return [s["__key__"] for t in sorted((run / "generated").glob("*.tar")) for s in iter_shard(t)]


@pytest.mark.slow
def test_fid_kid_is_equal_torch_fidelity_on_files(scored, tmp_path):
    import torch_fidelity

    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.scorers.inception import tiny_inception_weights

    run, ref, _cfg, summary = scored
    gen = tmp_path / "gen"
    gen.mkdir()
    for tar in sorted((run / "generated").glob("*.tar")):
        for sample in iter_shard(tar):
            (gen / f"{sample['__key__']}.jpg").write_bytes(sample["jpg"])
    # The reference protocol: the largest centred square of each real image (PIL's crop here), which
    # torch-fidelity then resizes to 299 px itself.
    cropped = tmp_path / "ref_cropped"
    for src in sorted(ref.rglob("*.png")):
        with Image.open(src) as img:
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            dst = cropped / src.relative_to(ref)
            dst.parent.mkdir(parents=True, exist_ok=True)
            img.crop((left, top, left + side, top + side)).save(dst)
    assert {Image.open(p).size for p in cropped.rglob("*.png")} == {(40, 40)}  # the 56×40 originals, squared
    expected = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(cropped), fid=True, kid=True, kid_subset_size=9, isc=True, isc_splits=1,
        samples_find_deep=True, feature_extractor_weights_path=str(tiny_inception_weights()), cuda=False,
        verbose=False, cache=False, batch_size=9, save_cpu_ram=True)
    assert summary.fid == pytest.approx(expected["frechet_inception_distance"], rel=1e-3)
    # The stage resizes each real square to 299 px itself and rounds it to uint8 (torch-fidelity resizes the
    # same square in float): at most half a grey level per pixel, which the cubic KID kernel amplifies (0.2 %).
    assert summary.kid_mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=5e-3)
    isc_kl = pd.concat([pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet"))])["isc_kl"]
    assert np.exp(isc_kl.mean()) == pytest.approx(expected["inception_score_mean"], rel=1e-3)
    assert expected["inception_score_mean"] > 1.01  # the tiny network's p(y|x) differs between images


@pytest.mark.slow
def test_clip_scores_are_100_max_cos_of_the_embeddings(scored):
    from imagenet_plus.io.tar import iter_shard
    from imagenet_plus.score.scorers import decode_image
    from imagenet_plus.score.scorers.clip import ClipScorer

    run, _ref, _cfg, _summary = scored
    clip = ClipScorer("tiny-random")
    texts = np.load(run / "scores" / "class_text_embeddings.npy").astype(np.float32)
    for tar in sorted((run / "generated").glob("*.tar")):
        samples = list(iter_shard(tar))
        df = pd.read_parquet(run / "scores" / f"{tar.stem}.parquet")
        img = clip.embed_images([decode_image(s["jpg"], "x") for s in samples]).numpy()
        prompt = clip.embed_texts([json.loads(s["json"])["prompt"] for s in samples]).numpy()
        np.testing.assert_allclose(df["clip_score"], 100 * np.maximum((img * prompt).sum(1), 0), atol=1e-3)
        cls = texts[df["label"].to_numpy()]
        np.testing.assert_allclose(df["clip_class_score"], 100 * np.maximum((img * cls).sum(1), 0), atol=0.3)
        stored = np.load(run / "scores" / f"{tar.stem}.clip.npy").astype(np.float32)
        np.testing.assert_allclose(stored, img, atol=2e-3)


@pytest.mark.slow
def test_rerun_is_noop_resume_and_batch_size_invariance(scored, tmp_path):
    run, ref, cfg, summary = scored
    before = (run / "scores" / "summary.json").stat().st_mtime_ns
    assert run_score(run, cfg) == summary
    assert (run / "scores" / "summary.json").stat().st_mtime_ns == before
    # A copy holding shards 00000 and 00002, scored with another batch size: the same per-image scores.
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("scores", "00001.*"))
    small = ScoreConfig(batch_size=2, **TINY)
    run_score(copy, small)
    for stem in ("00000", "00002"):
        a = pd.read_parquet(run / "scores" / f"{stem}.parquet")
        b = pd.read_parquet(copy / "scores" / f"{stem}.parquet")
        for col in ("clip_score", "clip_class_score", "clip_class_prob", "classifier_prob"):
            np.testing.assert_allclose(a[col], b[col], rtol=1e-3, atol=1e-4, err_msg=col)
        assert (a["classifier_top1"] == b["classifier_top1"]).all() and (a["key"] == b["key"]).all()
        for kind in ("inception", "clip", "logits"):
            np.testing.assert_allclose(np.load(run / "scores" / f"{stem}.{kind}.npy").astype(np.float32),
                                       np.load(copy / "scores" / f"{stem}.{kind}.npy").astype(np.float32),
                                       rtol=2e-3, atol=2e-3, err_msg=kind)
    # Resume: a lost parquet and a leftover .partial → only that shard is scored again.
    kept = (copy / "scores" / "00000.inception.npy").stat().st_mtime_ns
    first = pd.read_parquet(copy / "scores" / "00002.parquet")
    (copy / "scores" / "00002.parquet").unlink()
    (copy / "scores" / "00002.clip.npy.partial").write_bytes(b"leftover")
    run_score(copy, small)
    assert (copy / "scores" / "00000.inception.npy").stat().st_mtime_ns == kept
    assert not (copy / "scores" / "00002.clip.npy.partial").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "scores" / "00002.parquet"), first, rtol=1e-5)
    with pytest.raises(UserError, match="scored with other models .*classifier"):
        run_score(copy, ScoreConfig(**{**TINY, "classifier": "resnet18"}))


def test_config_validation():
    assert load_score_config({"batch-size": "8", "clip-model": "tiny-random"}).batch_size == 8
    with pytest.raises(UserError, match="'batch-size' must be positive"):
        load_score_config({"batch_size": 0})
    with pytest.raises(UserError, match="unknown key 'frobnicate'"):
        load_score_config({"frobnicate": 1})


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run the console entry point in-process (the path a user's shell takes): exit code and stderr."""
    from imagenet_plus.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["imagenet-plus", "score", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _assert_user_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2, no traceback, exactly one ``error:`` line (progress bars may precede it on stderr)."""
    assert code == 2, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, err)


def test_cli_bad_input_fails_fast(tmp_path: Path, monkeypatch, capsys):
    """Errors found before any network runs: no shards, missing/empty reference, weights, classifier name."""
    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=5, size=32)
    empty_run = tmp_path / "empty_run"
    (empty_run / "generated").mkdir(parents=True)
    shutil.copy(run / "run.yaml", empty_run / "run.yaml")
    shutil.copy(run / "classes.json", empty_run / "classes.json")
    (tmp_path / "emptyref").mkdir()
    cases = [
        ([str(empty_run)], ["no generated shards in", "generated"]),
        ([str(run), "--reference", str(tmp_path / "nope")], ["reference not found", "nope"]),
        ([str(run), "--reference", str(tmp_path / "emptyref")], ["emptyref holds no images"]),
        ([str(run), "--inception-weights", str(tmp_path / "w.pth")], ["inception weights file not found", "w.pth"]),
        ([str(run), "--classifier", "no_such_net_v9"], ["unknown classifier 'no_such_net_v9'"]),
        ([str(run), "--batch-size", "0"], ["batch-size", "must be positive"]),
    ]
    for args, fragments in cases:
        code, err = _main([*args, *TINY_FLAGS[:2]], monkeypatch, capsys)
        _assert_user_error(code, err, *fragments)
        assert not (run / "scores" / "summary.json").exists()
    # the same through a real process: one line on stderr, exit status 2
    result = subprocess.run([sys.executable, "-m", "imagenet_plus", "score", str(empty_run)],
                            capture_output=True, text=True, env=_clean_env(), timeout=120)
    _assert_user_error(result.returncode, result.stderr, "no generated shards in")


@pytest.mark.slow
def test_cli_corrupt_shard_wrong_weights_and_bad_reference_image(tmp_path: Path, monkeypatch, capsys):
    custom = [{"label": 0, "id": "my_widget", "name": "widget", "lemmas": ["widget"], "definition": "a thing",
               "hypernym": "", "group": ""}]
    run = write_fake_run(tmp_path / "run", per_class=4, shard_size=2, size=32, classes=custom)
    tar = run / "generated" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:700])  # truncated mid-member
    code, err = _main([str(run), *TINY_FLAGS], monkeypatch, capsys)
    _assert_user_error(code, err, "00001.tar")
    assert not (run / "scores" / "00001.parquet").exists() and not (run / "scores" / "summary.json").exists()
    assert not list((run / "scores").glob("*.partial"))

    shutil.rmtree(run / "scores")  # shard 00000 was scored before the error: other weights would be refused
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(8, 3, 3, 3)}, wrong)
    code, err = _main([str(run), *TINY_FLAGS[:2], "--inception-weights", str(wrong), *TINY_FLAGS[4:]],
                      monkeypatch, capsys)
    _assert_user_error(code, err, "wrong.pth", "does not fit")

    ref = tmp_path / "ref"
    (ref / "my_widget").mkdir(parents=True)
    (ref / "my_widget" / "bad.png").write_bytes(b"\x89PNG broken")
    code, err = _main([str(run), *TINY_FLAGS, "--reference", str(ref)], monkeypatch, capsys)
    _assert_user_error(code, err, "unreadable image in reference", "bad.png")

    code, err = _main([str(run), *TINY_FLAGS, "--skip-bad-shards", "--batch-size", "3"], monkeypatch, capsys)
    assert code == 0, err
    assert "skipped bad shard 00001" in err and "00001.tar" in err and "Traceback" not in err
    summary = ScoreSummary.read(run / "scores" / "summary.json")
    assert [b.shard for b in summary.bad_shards] == ["00001"] and summary.num_images == 2
    assert "corrupt or truncated shard" in summary.bad_shards[0].error
    assert summary.fid is None and summary.precision is None and summary.reference is None
    # a bad shard keeps the stage stale: the next run tries it again (and fails on it without the flag)
    code, err = _main([str(run), *TINY_FLAGS], monkeypatch, capsys)
    _assert_user_error(code, err, "00001.tar")
    df = pd.read_parquet(run / "scores" / "00000.parquet")
    assert len(df) == 2 and df["classifier_top1"].isna().all() and df["classifier_prob"].isna().all()
    assert df["realism"].isna().all() and df["isc_kl"].notna().all()


@pytest.mark.slow
def test_two_processes_split_shards(tmp_path: Path, scored):
    """torchrun --nproc_per_node 2 on CPU: shard s is scored by rank s % 2, one summary."""
    run = write_fake_run(tmp_path / "run", per_class=1, shard_size=1, size=32)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "imagenet_plus", "score", str(run), *TINY_FLAGS, "--batch-size", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = {s: json.loads((run / "scores" / f"{s}.stats.json").read_text()) for s in ("00000", "00001", "00002")}
    assert {s: (r["rank"], r["world_size"]) for s, r in ranks.items()} == {
        "00000": (0, 2), "00001": (1, 2), "00002": (0, 2)}
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert summary["num_images"] == 3 and summary["shards"] == ["00000", "00001", "00002"]
    assert pd.read_parquet(run / "scores" / "00001.parquet")["isc_kl"].notna().all()


# ---------------------------------------------------------------------------------------------------------------
# the dataset pass on a fabricated run: real file formats, random features, no network


def _fabricate_scores(root: Path, per_shard: tuple[int, ...] = (23, 30, 17), num_classes: int = 5,
                      clip_dim: int = 16, pool_dim: int = 64, seed: int = 0) -> Path:
    """RUN/run.yaml, classes.json and scores/*.{parquet,npy} written straight to the contract, with planted
    near-duplicates (the same CLIP embedding for two images of a class, in different shards).

    The pool features are ``pool_dim``-d rather than 2048 (the dataset pass takes the width from the files):
    torch-fidelity's FID of 2048-d statistics alone takes a minute on a loaded 2-core machine.
    """
    import pyarrow.parquet as pq
    import yaml

    from imagenet_plus.contract import make_key, score_table, shard_name

    rng = np.random.default_rng(seed)
    paths = RunPaths(root)
    paths.scores.mkdir(parents=True)
    paths.run_yaml.write_text(yaml.safe_dump({"config": {"model": "fake"}, "config_hash": "fake"}))
    classes = [{"label": i, "id": f"c{i:02d}", "name": f"class {i}"} for i in range(num_classes)]
    paths.classes_json.write_text(json.dumps(classes))
    index = 0
    planted = rng.normal(size=clip_dim)
    for s, n in enumerate(per_shard):
        labels = rng.integers(0, num_classes, n)
        labels[0] = 1  # class 1 appears in every shard: its planted duplicate spans shards
        keys = [make_key(classes[lab]["id"], index + i) for i, lab in enumerate(labels)]
        index += n
        clip = rng.normal(size=(n, clip_dim))
        clip[0] = planted
        clip /= np.linalg.norm(clip, axis=1, keepdims=True)
        top1 = [None if i % 7 == 0 else bool(rng.random() < 0.5) for i in range(n)]
        cols = {"key": keys, "label": labels.tolist(), "class_id": [classes[lab]["id"] for lab in labels],
                "clip_score": rng.uniform(10, 40, n).tolist(), "clip_class_score": rng.uniform(10, 40, n).tolist(),
                "clip_class_prob": rng.uniform(0, 1, n).tolist(), "clip_class_rank": [1] * n, "isc_kl": [None] * n,
                "classifier_top1": top1, "classifier_top5": [None if t is None else True for t in top1],
                "classifier_prob": rng.uniform(0, 1, n).tolist(), "realism": [None] * n,
                "nsfw_score": [None] * n, "dup_of": [None] * n,
                "nsfw": [False] * n, "attempt": [0] * n, "strategy": ["name"] * n}
        files = paths.score_files(shard_name(s))
        pq.write_table(score_table(cols), files.parquet)
        np.save(files.inception, (rng.normal(0.5, 1.0, (n, pool_dim)) * (1 + labels[:, None] * 0.1)).astype(np.float16))
        np.save(files.clip, clip.astype(np.float16))
        np.save(files.logits, rng.normal(0, 2, (n, 1008)).astype(np.float32))
    return root


def _fabricated_arrays(run: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    scores = sorted((run / "scores").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(p) for p in scores], ignore_index=True)
    load = lambda kind: np.concatenate([np.load(p.with_name(p.name.replace(".parquet", f".{kind}.npy")))  # noqa: E731
                                        for p in scores])
    return df, load("inception").astype(np.float32), load("clip").astype(np.float32), load("logits")


def _fake_reference(num: int, num_classes: int = 5, seed: int = 3, dim: int = 64):
    from imagenet_plus.score import metrics as metrics
    from imagenet_plus.score.reference import Reference

    rng = np.random.default_rng(seed)
    feats = rng.normal(0.6, 1.1, (num, dim)).astype(np.float32)
    class_ids = [f"c{i % num_classes:02d}" for i in range(num)]
    return Reference(path="fake", kind="statistics", content_hash="fake", weights_id=None, features=feats,
                     class_ids=class_ids, stats=metrics.fid_statistics(feats))


@pytest.mark.slow
def test_dataset_pass_streams_and_equals_torch_fidelity(tmp_path: Path, monkeypatch):
    """Every dataset metric against torch-fidelity on all the features at once; per-image terms by definition."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from imagenet_plus.score import metrics as metrics

    run = _fabricate_scores(tmp_path / "run")
    ref = _fake_reference(40)
    blocks = []
    original_blocks = dataset_pass._class_blocks
    monkeypatch.setattr(dataset_pass, "CLASS_BLOCK_BYTES", 1)  # one class per block: the per-class step in pieces
    monkeypatch.setattr(dataset_pass, "_class_blocks", lambda *a: (blocks.append(b) or b for b in original_blocks(*a)))
    summary = dataset_pass.run_dataset_pass(run, ref)
    assert [b.tolist() for b in blocks] == [[label] for label in range(5)]
    df, pool, clip, logits = _fabricated_arrays(run)
    lg = torch.from_numpy(logits).double()
    p = lg.softmax(1)
    kl = (p * (lg.log_softmax(1) - p.mean(0).log()[None])).sum(1).numpy()
    np.testing.assert_allclose(df["isc_kl"], kl, rtol=1e-9)
    isc = isc_features_to_metric(torch.from_numpy(logits))
    assert (summary.inception_score_mean, summary.inception_score_std) == pytest.approx(
        (isc["inception_score_mean"], isc["inception_score_std"]), rel=1e-9)
    gen, real = torch.from_numpy(pool), torch.from_numpy(ref.features)
    fid = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real), False)
    assert summary.fid == pytest.approx(fid["frechet_inception_distance"], rel=1e-4)
    kid = kid_features_to_metric(gen, real, kid_subsets=100, kid_subset_size=40, verbose=False)
    assert summary.kid_mean == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-6)
    prc = prc_features_to_metric(gen, real, prc_neighborhood=3, prc_batch_size=1000, save_cpu_ram=False,
                                 verbose=False)
    assert (summary.precision, summary.recall) == pytest.approx((prc["precision"], prc["recall"]))
    assert df["realism"].notna().all() and summary.num_images == len(df) == 70
    # near-duplicates: by definition, within each class in key order (the planted copies span shards)
    expected_dup: list[str | None] = [None] * len(df)
    for _label, grp in df.groupby("label"):
        order = grp.sort_values("key", kind="stable")
        emb = clip[order.index.to_numpy()]
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        for i, row in enumerate(order.index):
            hits = np.nonzero(emb[:i] @ emb[i] >= 0.95)[0]
            expected_dup[row] = order["key"].iloc[hits[0]] if len(hits) else None
    assert [None if pd.isna(d) else d for d in df["dup_of"]] == expected_dup
    assert sum(d is not None for d in expected_dup) >= 2
    assert summary.duplicates == sum(d is not None for d in expected_dup)
    for label in range(5):
        rows = (df["label"] == label).to_numpy()
        entry = summary.per_class[f"c{label:02d}"]
        assert entry.count == rows.sum()
        assert entry.clip_score_mean == pytest.approx(df["clip_score"][rows].mean(), rel=1e-12)
        known = df["classifier_top1"][rows].dropna()
        assert entry.classifier_top1_rate == pytest.approx(known.astype(bool).mean(), rel=1e-12)
        # fid_small_set equals torch-fidelity's FID (test_metrics); here: the right rows of each side
        assert entry.fid == pytest.approx(metrics.fid_small_set(pool[rows], ref.features[label::5]), rel=1e-9)


def test_dataset_pass_uses_fixed_seeded_samples(tmp_path: Path):
    """Above ``metric_samples``, KID and precision/recall are torch-fidelity's on the documented samples."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from imagenet_plus.score.dataset_pass import GENERATED_SAMPLE_SEED, REFERENCE_SAMPLE_SEED, run_dataset_pass

    run = _fabricate_scores(tmp_path / "run")
    ref = _fake_reference(60)
    summary = run_dataset_pass(run, ref, metric_samples=25)
    _df, pool, _clip, _logits = _fabricated_arrays(run)
    gen = torch.from_numpy(pool[np.sort(np.random.default_rng(GENERATED_SAMPLE_SEED).choice(70, 25, replace=False))])
    real = torch.from_numpy(
        ref.features[np.sort(np.random.default_rng(REFERENCE_SAMPLE_SEED).choice(60, 25, replace=False))])
    kid = kid_features_to_metric(gen, real, kid_subsets=100, kid_subset_size=25, verbose=False)
    assert summary.kid_mean == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-6)
    prc = prc_features_to_metric(gen, real, prc_neighborhood=3, prc_batch_size=1000, save_cpu_ram=False,
                                 verbose=False)
    assert (summary.precision, summary.recall) == pytest.approx((prc["precision"], prc["recall"]))


def test_a_writer_out_of_the_schema_fails_and_leaves_the_parquets(tmp_path: Path, monkeypatch):
    run = _fabricate_scores(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "scores").glob("*.parquet")}
    original = dataset_pass._dataset_columns
    monkeypatch.setattr(dataset_pass, "_dataset_columns",
                        lambda *a: {**original(*a), "sharpness": [0.0] * a[0].count})
    with pytest.raises(UserError, match="sharpness.* not in the score schema"):
        dataset_pass.run_dataset_pass(run)
    assert {p.name: p.read_bytes() for p in (run / "scores").glob("*.parquet")} == before
    assert not list((run / "scores").glob("*.partial"))


# ---------------------------------------------------------------------------------------------------------------
# the records and the freshness rule, on the scored run


@pytest.mark.slow
def test_summary_record_is_the_file_the_stage_wrote(scored):
    """summary.json and models.json read back as their records, and give back every key the stage wrote."""
    from imagenet_plus.contract.scores import ModelsRecord

    run, _ref, _cfg, summary = scored
    path = run / "scores" / "summary.json"
    on_disk = json.loads(path.read_text())
    assert summary.to_dict() == on_disk and ScoreSummary.read(path) == summary
    assert path.read_text() == json.dumps(on_disk, indent=2, sort_keys=True) + "\n"
    # the keys docs/scoring.md lists, at every level
    assert set(on_disk) == {"fid", "kid_mean", "kid_std", "inception_score_mean", "inception_score_std",
                            "clip_score_mean", "precision", "recall", "num_images", "duplicates",
                            "classifier_top1_rate", "classifier_top5_rate", "per_class", "models", "reference",
                            "shards", "bad_shards", "reference_arg", "config", "versions"}
    assert set(on_disk["models"]) == {"clip", "inception_weights", "classifier", "nsfw_detector",
                                      "inception_weights_id"}
    for entry in on_disk["per_class"].values():
        assert set(entry) == {"count", "fid", "vendi", "clip_score_mean", "classifier_top1_rate",
                              "classifier_top5_rate", "duplicates"}
    models = run / "scores" / "models.json"
    assert ModelsRecord.read(models).to_dict() == json.loads(models.read_text())
    assert set(json.loads(models.read_text())) == set(on_disk["models"]) - {"inception_weights_id"}


@pytest.mark.slow
def test_score_is_current_until_a_setting_or_a_shard_changes(scored, tmp_path):
    import dataclasses

    from imagenet_plus.pipeline.freshness import is_current, what_changed
    from imagenet_plus.score.stage import stage_inputs

    run, _ref, cfg, _summary = scored
    assert is_current(RunPaths(run), stage_inputs(run, cfg))
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # sizes and modification times kept: the copy is as current
    paths = RunPaths(copy)
    assert is_current(paths, stage_inputs(copy, cfg))
    assert is_current(paths, stage_inputs(copy, dataclasses.replace(cfg, batch_size=2, num_workers=1)))
    other = stage_inputs(copy, dataclasses.replace(cfg, classifier="resnet18"))
    assert not is_current(paths, other) and what_changed(paths, other) == ["settings"]
    for suffix in (".tar", ".json"):  # a top-up: one more finished generated shard
        shutil.copy(copy / "generated" / f"00002{suffix}", copy / "generated" / f"00003{suffix}")
    grown = stage_inputs(copy, cfg)
    assert not is_current(paths, grown) and what_changed(paths, grown) == ["files"]
