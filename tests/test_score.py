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

from imagenet_plus.errors import UserError
from imagenet_plus.score import SCORE_COLUMNS, ScoreConfig, load_score_config, run_score

torch.set_num_threads(2)

TINY = dict(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random")
TINY_FLAGS = ["--clip-model", "tiny-random", "--inception-weights", "tiny-random", "--classifier", "tiny-random"]


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
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_scores_follow_the_contract(scored):
    run, _ref, _cfg, summary = scored
    scores = run / "scores"
    stems = ["00000", "00001", "00002"]
    assert summary["shards"] == stems and summary["bad_shards"] == [] and summary["num_images"] == 9
    for key in ("fid", "kid_mean", "kid_std", "inception_score_mean", "inception_score_std", "clip_score_mean",
                "precision", "recall"):
        assert summary[key] is not None and np.isfinite(summary[key]), key
    assert summary["models"]["clip"] == "tiny-random" and summary["reference"]["kind"] == "folder"
    assert summary["reference"]["per_class"] is True
    for c in FAKE_CLASSES:
        entry = summary["per_class"][c["id"]]
        assert entry["count"] == 3 and entry["fid"] is not None and 1.0 <= entry["vendi"] <= 3.0
        assert entry["classifier_top1_rate"] is not None
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
    from imagenet_plus.shards import iter_shard

    return [s["__key__"] for t in sorted((run / "generated").glob("*.tar")) for s in iter_shard(t)]


@pytest.mark.slow
def test_fid_kid_is_equal_torch_fidelity_on_files(scored, tmp_path):
    import torch_fidelity

    from imagenet_plus.scorers.inception import tiny_inception_weights
    from imagenet_plus.shards import iter_shard

    run, ref, _cfg, summary = scored
    gen = tmp_path / "gen"
    gen.mkdir()
    for tar in sorted((run / "generated").glob("*.tar")):
        for sample in iter_shard(tar):
            (gen / f"{sample['__key__']}.jpg").write_bytes(sample["jpg"])
    expected = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(ref), fid=True, kid=True, kid_subset_size=9, isc=True, isc_splits=1,
        samples_find_deep=True, feature_extractor_weights_path=str(tiny_inception_weights()), cuda=False,
        verbose=False, cache=False, batch_size=9, save_cpu_ram=True)
    assert summary["fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-3)
    assert summary["kid_mean"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-3)
    isc_kl = pd.concat([pd.read_parquet(p) for p in sorted((run / "scores").glob("*.parquet"))])["isc_kl"]
    assert np.exp(isc_kl.mean()) == pytest.approx(expected["inception_score_mean"], rel=1e-3)
    assert expected["inception_score_mean"] > 1.01  # the tiny network's p(y|x) differs between images


@pytest.mark.slow
def test_clip_scores_are_100_max_cos_of_the_embeddings(scored):
    from imagenet_plus.scorers import decode_image
    from imagenet_plus.scorers.clip import ClipScorer
    from imagenet_plus.shards import iter_shard

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
        run_score(copy, ScoreConfig(clip_model="tiny-random", inception_weights="tiny-random", classifier="resnet18"))


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
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert [b["shard"] for b in summary["bad_shards"]] == ["00001"] and summary["num_images"] == 2
    assert summary["fid"] is None and summary["precision"] is None and summary["reference"] is None
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
