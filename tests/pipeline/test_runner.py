"""Tests of imagenet_plus.runall (the 'run' command): stage order, skipping, re-running, config errors, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from imagenet_plus.contract import INFO_NAME
from imagenet_plus.errors import UserError
from imagenet_plus.pipeline.runner import load_plan, run_all

MINI = """\
classes: imagenet-1k
class-limit: 2
images-per-class: 4
model: tiny-random
steps: 1
resolution: 64
batch-size: 4
shard-size: 2
score:
  clip-model: tiny-random
  inception-weights: tiny-random
  classifier: tiny-random
  nsfw-model: tiny-random
  batch-size: 8
  num-workers: 1
select:
  per-class: 3
  thresholds:
    drop-duplicates: false
release:
  val-per-class: 1
  shard-size: 4
report:
  sample-classes: 2
"""


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Replace every stage function by a stub that records the call and writes the stage's marker outputs."""
    from imagenet_plus.evaluate import stage as evaluate
    from imagenet_plus.generate import stage as generate
    from imagenet_plus.publish import stage as publish
    from imagenet_plus.release import stage as release
    from imagenet_plus.report import stage as report
    from imagenet_plus.score import stage as score
    from imagenet_plus.select import stage as select

    calls: list[tuple[str, object]] = []

    def gen(cfg, out, top_up=False):
        calls.append(("generate", cfg))
        Path(out, "generated").mkdir(parents=True, exist_ok=True)
        return generate.GenerateResult(Path(out), 0, 0, 0, 0.0, done=True)

    def sco(run, cfg):
        calls.append(("score", cfg))
        Path(run, "scores").mkdir(exist_ok=True)
        Path(run, "scores", "summary.json").write_text("{}")
        return {}

    def sel(run, cfg):
        calls.append(("select", cfg))
        Path(run, "selection.parquet").write_text("x")
        Path(run, "selection.json").write_text("{}")
        return SimpleNamespace(num_kept=1)

    def rel(run, out, cfg):
        calls.append(("release", (out, cfg)))
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, INFO_NAME).write_text("{}")
        Path(out, "README.md").write_text("card")
        return Path(out)

    def rep(run, cfg):
        calls.append(("report", cfg))
        Path(run, "report").mkdir(exist_ok=True)
        Path(run, "report", "index.html").write_text("<html></html>")
        return Path(run, "report", "index.html")

    def ev(cfg):
        calls.append(("evaluate", cfg))
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        Path(cfg.out, "eval.json").write_text("{}")
        return {"results": {"synthetic": {"accuracy": 0.5}}}

    def pub(rel_dir, cfg):
        calls.append(("publish", (rel_dir, cfg)))
        return "https://example.invalid/datasets/x"

    monkeypatch.setattr(generate, "run_generate", gen)
    monkeypatch.setattr(score, "run_score", sco)
    monkeypatch.setattr(select, "run_select", sel)
    monkeypatch.setattr(release, "run_release", rel)
    monkeypatch.setattr(report, "run_report", rep)
    monkeypatch.setattr(report, "is_up_to_date", lambda run, cfg: Path(run, "report", "index.html").is_file())
    monkeypatch.setattr(score, "is_finished", lambda run, cfg: Path(run, "scores", "summary.json").is_file())
    monkeypatch.setattr(evaluate, "run_evaluate", ev)
    monkeypatch.setattr(publish, "run_publish", pub)
    return calls


def _cfg(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _stages(calls: list[tuple[str, object]]) -> list[str]:
    return [c[0] for c in calls]


def test_order_skip_and_rerun_after_change(tmp_path: Path, stubs: list) -> None:
    cfg = _cfg(tmp_path, MINI)
    run = tmp_path / "run"
    out = run_all(cfg, run)
    assert _stages(stubs) == ["generate", "score", "select", "release", "report"]
    assert out["evaluate"] == out["publish"] == "not configured"
    # the release goes to RUN/release by default; inline thresholds become RUN/thresholds.yaml
    assert stubs[3][1][0] == run / "release"
    assert stubs[2][1].thresholds == str(run / "thresholds.yaml")
    assert "drop_duplicates: false" in (run / "thresholds.yaml").read_text()
    recorded = json.loads((run / "pipeline.json").read_text())["stages"]
    assert set(recorded) == {"generate", "score", "select", "release", "report"}

    stubs.clear()
    out = run_all(cfg, run)
    assert stubs == []
    assert set(out.values()) == {"skipped", "not configured"}

    # a changed select setting re-runs select and every later stage, not the earlier ones
    _cfg(tmp_path, MINI.replace("per-class: 3", "per-class: 2"))
    run_all(cfg, run)
    assert _stages(stubs) == ["select", "release", "report"]

    # a deleted output re-runs that stage (and, through the chain, nothing before it)
    stubs.clear()
    (run / "scores" / "summary.json").unlink()
    run_all(cfg, run)
    assert _stages(stubs) == ["score"]


def test_scores_of_more_images_reselect_and_rerelease(tmp_path: Path, stubs: list) -> None:
    """After a top-up is scored (summary.json covers more images than the selection), `run` selects and releases
    again although their settings did not change; stages whose inputs did not change stay skipped."""
    cfg = _cfg(tmp_path, MINI)
    run = tmp_path / "run"
    run_all(cfg, run)
    stubs.clear()
    (run / "scores" / "summary.json").write_text('{"num_images": 10}')
    run_all(cfg, run)
    assert _stages(stubs) == ["select", "release"]  # the stubbed report counts as up to date
    stubs.clear()
    run_all(cfg, run)
    assert _stages(stubs) == ["select", "release"]  # the stub selection still says nothing of 10 images
    (run / "selection.json").write_text('{"num_scored": 10}')
    stubs.clear()
    run_all(cfg, run)
    assert _stages(stubs) == ["release"]  # a selection newer than the release
    stubs.clear()
    run_all(cfg, run)
    assert stubs == []


def test_evaluate_and_publish_when_configured(tmp_path: Path, stubs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    (real / "n01440764").mkdir(parents=True)
    text = MINI + f"evaluate:\n  test: {real}\n  epochs: 2\npublish:\n  repo-id: someone/demo\n  dry-run: true\n"
    cfg = _cfg(tmp_path, text)
    run = tmp_path / "run"
    run_all(cfg, run)
    assert _stages(stubs) == ["generate", "score", "select", "release", "report", "evaluate", "publish"]
    ev = stubs[5][1]
    assert ev.train == str(run / "release") and ev.out == str(run / "eval") and ev.epochs == 2
    rel_dir, pub = stubs[6][1]
    assert rel_dir == run / "release" and pub.repo_id == "someone/demo" and pub.dry_run


def _cli_error(args: list[str]) -> str:
    from imagenet_plus.cli import app

    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0
    assert isinstance(r.exception, UserError), repr(r.exception)
    assert "\n" not in r.exception.message
    return r.exception.message


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ("evaluate:\n  epochs: 2\n", ["evaluate", "'test'"]),
        ("publish:\n  private: true\n", ["publish", "'repo-id'"]),
        ("evaluate:\n  test: /does/not/exist\n", ["evaluate", "/does/not/exist"]),
        ("publish:\n  repo-id: not a repo\n", ["not a repo"]),
        ("report:\n  colour: red\n", ["report", "'colour'"]),
    ],
)
def test_missing_or_bad_stage_setting_fails_before_any_work(tmp_path: Path, stubs: list, extra: str,
                                                            needles: list[str]) -> None:
    text = MINI.replace("report:\n  sample-classes: 2\n", "") + extra
    cfg = _cfg(tmp_path, text)
    msg = _cli_error(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert str(cfg) in msg
    for n in needles:
        assert n in msg, msg
    assert stubs == []
    assert not (tmp_path / "run").exists()


def test_bad_inline_thresholds_and_score_key(tmp_path: Path, stubs: list) -> None:
    cfg = _cfg(tmp_path, MINI.replace("drop-duplicates: false", "clip-score-min: 400"))
    msg = _cli_error(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert "select.thresholds" in msg and "clip_score_min" in msg
    cfg = _cfg(tmp_path, MINI.replace("  num-workers: 1", "  num-wrokers: 1"))
    msg = _cli_error(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert f"{cfg}: score" in msg and "num-wrokers" in msg
    assert stubs == []


def test_bad_generate_value_names_the_file(tmp_path: Path, stubs: list) -> None:
    cfg = _cfg(tmp_path, MINI.replace("images-per-class: 4", "images-per-class: 0"))
    msg = _cli_error(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert str(cfg) in msg and "images-per-class" in msg
    assert stubs == []


def test_publish_without_token_fails_before_any_work(tmp_path: Path, stubs: list,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    cfg = _cfg(tmp_path, MINI + "publish:\n  repo-id: someone/demo\n")
    msg = _cli_error(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert "token" in msg and "HF_TOKEN" in msg
    assert stubs == []


def test_load_plan_defaults(tmp_path: Path) -> None:
    plan = load_plan(_cfg(tmp_path, MINI.replace("release:\n", "release:\n  out: elsewhere/rel\n")), tmp_path / "r")
    assert plan.release_out == Path("elsewhere/rel")
    assert plan.release.val_per_class == 1
    assert plan.generate.model == "tiny-random"
    assert plan.evaluate is None and plan.publish is None


# ------------------------------------------------------------------------------------------------
# The real pipeline (tiny random models), killed in the middle of a stage, then resumed.


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"
    return env


@pytest.mark.slow
def test_run_killed_mid_stage_resumes_and_finishes(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    real = tmp_path / "real"  # a "real" test set in wnid folders, for the evaluate stage
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (real / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(real / wnid / f"{i}.JPEG")
    cfg = _cfg(tmp_path, MINI + f"evaluate:\n  test: {real}\n  epochs: 1\n  image-size: 32\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "imagenet_plus", "run", "--config", str(cfg), "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            start_new_session=True)
    deadline = time.time() + 300
    first_scores = run / "scores" / "00000.parquet"
    try:
        while not first_scores.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "score never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # killed inside the score stage (1 of 4 shards scored)
    finally:
        proc.wait(timeout=60)
    assert not (run / "scores" / "summary.json").exists()
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert set(state) == {"generate"}

    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "run: generate: already done, skipped" in p.stderr
    assert "run: score: running" in p.stderr
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert set(state) == {"generate", "score", "select", "release", "report", "evaluate"}
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["train_samples"] == 4 and ev["test_samples"] == 6  # 6 kept - 1 validation image per class
    # every generated image was scored exactly once, and the release holds exactly the kept images
    import pandas as pd

    scores = pd.concat(pd.read_parquet(f) for f in sorted((run / "scores").glob("*.parquet")))
    assert len(scores) == 8 and scores["key"].is_unique
    sel = pd.read_parquet(run / "selection.parquet")
    info = json.loads((run / "release" / INFO_NAME).read_text())
    assert sum(s["num_samples"] for s in info["splits"].values()) == int(sel["kept"].sum()) == 6
    assert (run / "report" / "index.html").stat().st_size > 1000

    # a third run does nothing
    mtime = (run / "selection.parquet").stat().st_mtime_ns
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0
    assert p.stderr.count("already done, skipped") == 6
    assert (run / "selection.parquet").stat().st_mtime_ns == mtime


def test_non_main_process_waits_for_the_main_record(tmp_path: Path) -> None:
    import threading

    from imagenet_plus.pipeline.runner import FAILED_FILE, PipelineState, _wait_for_main

    plan = load_plan(_cfg(tmp_path, MINI), tmp_path / "run")
    plan.run.mkdir()
    timer = threading.Timer(0.3, lambda: PipelineState(plan.run).mark("select", "abc", 1.0))
    timer.start()
    t0 = time.perf_counter()
    _wait_for_main(plan, "select", "abc", poll=0.05)
    assert time.perf_counter() - t0 >= 0.25
    timer.join()
    (plan.run / FAILED_FILE).write_text("thresholds keep no image\n")
    with pytest.raises(UserError, match="stage release failed on the main process: thresholds keep no image"):
        _wait_for_main(plan, "release", "def", poll=0.05)


# ------------------------------------------------------------------------------------------------
# The stage registry


def test_registry_order_and_sections_match_the_config_reader() -> None:
    from imagenet_plus.pipeline.config import STAGE_SECTIONS
    from imagenet_plus.pipeline.runner import ALL_RANK_STAGES, REGISTRY, STAGES

    assert STAGES == ("generate", "score", "diagnose", "select", "release", "report", "evaluate", "publish")
    assert ALL_RANK_STAGES == ("generate", "score", "evaluate")
    # every stage section is one the config file reader separates from generate's top-level keys, and back
    assert tuple(s.section for s in REGISTRY.values() if s.section) == STAGE_SECTIONS


def test_diagnose_section_runs_diagnose_after_score(tmp_path: Path, stubs: list,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from imagenet_plus.contract import RunPaths
    from imagenet_plus.diagnose import stage as diagnose

    def diag(run, cfg):
        stubs.append(("diagnose", cfg))
        paths = RunPaths(Path(run))
        paths.diagnosis_parquet.write_text("x")
        paths.diagnosis_json.write_text("{}")
        return {"verdict_counts": {"ok": 2}}

    monkeypatch.setattr(diagnose, "run_diagnose", diag)
    cfg = _cfg(tmp_path, MINI + "diagnose:\n  min-vendi: 1.2\n")
    run = tmp_path / "run"
    out = run_all(cfg, run)
    assert _stages(stubs) == ["generate", "score", "diagnose", "select", "release", "report"]
    assert out["diagnose"] == "ran"
    assert isinstance(stubs[2][1], diagnose.DiagnoseConfig) and stubs[2][1].min_vendi == 1.2
    recorded = json.loads((run / "pipeline.json").read_text())["stages"]
    assert recorded["diagnose"]["verdicts"] == {"ok": 2}
    stubs.clear()
    assert set(run_all(cfg, run).values()) == {"skipped", "not configured"}
    # a deleted diagnosis re-runs diagnose only
    RunPaths(run).diagnosis_parquet.unlink()
    run_all(cfg, run)
    assert _stages(stubs) == ["diagnose"]
    # a bad diagnose setting fails before any work, naming the file and section
    bad = _cfg(tmp_path, MINI + "diagnose:\n  min-vendi: 0.5\n", name="bad.yaml")
    msg = _cli_error(["run", "--config", str(bad), "--out", str(tmp_path / "run2")])
    assert f"{bad}: diagnose" in msg and "min_vendi" in msg
    assert not (tmp_path / "run2").exists()


def test_without_a_diagnose_section_the_chain_is_unchanged(tmp_path: Path, stubs: list) -> None:
    """An optional stage that is off does not enter the settings chain: earlier runs stay 'finished'."""
    from imagenet_plus.pipeline.config import config_to_dict, stable_hash

    cfg = _cfg(tmp_path, MINI)
    run = tmp_path / "run"
    run_all(cfg, run)
    plan = load_plan(cfg, run)
    chain = ""
    for stage in ("generate", "score", "select"):
        chain = stable_hash([chain, stage, plan.settings(stage)])
    recorded = json.loads((run / "pipeline.json").read_text())["stages"]
    assert recorded["select"]["hash"] == chain
    assert plan.diagnose is None and plan.settings("diagnose") is None
    assert plan.settings("score") == config_to_dict(plan.score)


def test_a_new_stage_is_one_registry_entry(tmp_path: Path, stubs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    from imagenet_plus.pipeline import runner as runall

    @dataclass(frozen=True)
    class AuditConfig:
        level: int = 3

    ran: list[int] = []

    def run_audit(plan):
        ran.append(plan.audit.level)
        (plan.run / "audit.txt").write_text("ok")
        return {"level": plan.audit.level}

    spec = runall.StageSpec("audit", lambda src: {"audit": AuditConfig()}, run_audit,
                            lambda plan, entry: (plan.run / "audit.txt").is_file())
    monkeypatch.setitem(runall.REGISTRY, "audit", spec)
    run = tmp_path / "run"
    out = run_all(_cfg(tmp_path, MINI), run)
    assert out["audit"] == "ran" and ran == [3]
    assert _stages(stubs) == ["generate", "score", "select", "release", "report"]
    assert json.loads((run / "pipeline.json").read_text())["stages"]["audit"]["level"] == 3
    assert run_all(_cfg(tmp_path, MINI), run)["audit"] == "skipped"
    (run / "audit.txt").unlink()
    assert run_all(_cfg(tmp_path, MINI), run)["audit"] == "ran" and ran == [3, 3]


def test_plan_attributes(tmp_path: Path) -> None:
    plan = load_plan(_cfg(tmp_path, MINI), tmp_path / "r")
    assert plan.thresholds == {"drop_duplicates": False}
    assert plan.report.sample_classes == 2
    with pytest.raises(AttributeError, match="no 'colour'"):
        _ = plan.colour
