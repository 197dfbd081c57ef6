"""Engines: who makes which shard (accelerate, separate jobs of a share, a Ray cluster); same bytes every way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_run
from ray_helpers import HANG_FILE_ENV, noise_factory

from imagenet_plus.contract import RunPaths
from imagenet_plus.errors import ConfigError, UserError
from imagenet_plus.generate import planned_keys, run_generate
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.engines import ExecutionConfig, job_share, load_execution
from imagenet_plus.pipeline.freshness import read_state as _read_state

REPO = Path(__file__).resolve().parents[2]
TINY_SCORERS = dict(clip_model="tiny-random", inception_weights="tiny-random", classifier="tiny-random",
                    nsfw_model="tiny-random", batch_size=2, num_workers=1)


@pytest.fixture
def class_file(tmp_path: Path) -> Path:
    f = tmp_path / "classes.csv"
    f.write_text("name,description\nred apple,a red fruit\ngreen pear,a green fruit\nyellow lemon,a sour fruit\n")
    return f


def fake_cfg(class_file: Path, **kw) -> GenerateConfig:
    base = dict(classes=str(class_file), images_per_class=5, model="fake/model", steps=1, guidance=0.0,
                resolution=32, batch_size=3, shard_size=4, prompt_strategy=("name", "diverse"))
    base.update(kw)
    return GenerateConfig(**base)


def read_state(run: Path, stage: str):
    return _read_state(RunPaths(run), stage)


def tars(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "generated").glob("*.tar"))}


def keys(run: Path) -> list[str]:
    return sorted(s["__key__"] for tar in sorted((run / "generated").glob("*.tar")) for s in iter_shard(tar))


def stats_without_timing(run: Path) -> dict[str, dict]:
    drop = ("seconds", "images_per_second", "rank")
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in drop}
            for p in sorted((run / "generated").glob("*.json"))}


# --------------------------------------------------------------------------------------------------
# Settings


def test_execution_settings_and_slurm_arrays():
    assert job_share(ExecutionConfig(), {}) is None
    assert job_share(ExecutionConfig(job_index=2, num_jobs=3), {}) == (2, 3)
    # Slurm: --array=1-4 gives ids 1..4 and SLURM_ARRAY_TASK_MIN=1; the index counts from the minimum
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert job_share(ExecutionConfig(), slurm) == (2, 4)
    assert job_share(ExecutionConfig(), {**slurm, "SLURM_ARRAY_TASK_MIN": "0"}) == (3, 4)
    assert job_share(ExecutionConfig(job_index=0, num_jobs=2), slurm) == (0, 2)  # flags win
    assert job_share(ExecutionConfig(job_index=0, num_jobs=1), slurm) is None  # an array of separate runs
    assert job_share(ExecutionConfig(engine="ray"), slurm) is None  # the Ray cluster makes every shard
    with pytest.raises(UserError, match="an array with a step"):
        job_share(ExecutionConfig(), {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4"})
    for kw, culprit in [(dict(engine="spark"), "'engine' must be one of accelerate, ray, got 'spark'"),
                        (dict(job_index=1), "give 'job-index' and 'num-jobs' together"),
                        (dict(job_index=3, num_jobs=3), "'job-index' must be within 0..2, got 3"),
                        (dict(job_index=0, num_jobs=0), "'num-jobs' must be positive"),
                        (dict(ray_address="auto"), "'ray-address' needs 'engine: ray'"),
                        (dict(engine="ray", job_index=0, num_jobs=2), "with 'engine: ray' the Ray cluster")]:
        with pytest.raises(ConfigError, match=culprit):
            ExecutionConfig(**kw)


def test_engine_keys_in_config_files_are_not_generate_settings(tmp_path, class_file):
    """``engine:`` and the job share are read from a config's top level by generate and by run, and are neither in
    GenerateConfig nor in run.yaml's hash: switching engines resumes the same run."""
    from imagenet_plus.pipeline.runner import load_plan

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"classes: {class_file}\nmodel: tiny-random\nengine: ray\nray-address: auto\n"
                        "score:\n  clip-model: tiny-random\n")
    gen = load_generate_config(cfg_file)
    assert gen.model == "tiny-random" and not hasattr(gen, "engine")
    assert load_execution({"engine": "ray", "model": "x"}, {}, str(cfg_file)) == ExecutionConfig("ray")
    assert load_execution({"engine": "ray"}, {"engine": "accelerate"}, "x").engine == "accelerate"
    plan = load_plan(cfg_file, tmp_path / "run")
    assert plan.execution == ExecutionConfig(engine="ray", ray_address="auto")
    assert plan.generate.config_hash() == load_generate_config(None, {"classes": str(class_file),
                                                                       "model": "tiny-random"}).config_hash()
    cfg_file.write_text(f"classes: {class_file}\nengine: dask\n")
    r = subprocess.run([sys.executable, "-m", "imagenet_plus", "generate", "--config", str(cfg_file), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (f"error: {cfg_file}: execution settings: 'engine' must be one "
                                                      "of accelerate, ray, got 'dask'"), r.stderr
    assert not (tmp_path / "run").exists()


def test_engine_ray_without_ray_is_one_line(tmp_path, class_file):
    """``import ray`` fails: generate and score say what to install in one line, exit 2, and write nothing."""
    code = ("import sys; sys.modules['ray'] = None\nfrom imagenet_plus.cli import main\n"
            "sys.argv = ['imagenet-plus', *sys.argv[1:]]\nmain()\n")
    run = tmp_path / "run"
    for args in (["generate", "--out", str(run), "--classes", str(class_file), "--model", "tiny-random",
                  "--engine", "ray"], ["score", str(run), "--engine", "ray"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == "error: --engine ray needs Ray: pip install 'imagenet-plus[ray]'", r.stderr
        assert not run.exists()


def test_an_unreachable_ray_cluster_is_one_line(tmp_path, class_file):
    """Nothing listens at --ray-address: one line in seconds (Ray itself would retry for minutes), nothing written."""
    import socket

    pytest.importorskip("ray")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    run = tmp_path / "run"
    with pytest.raises(UserError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"):
        run_generate(fake_cfg(class_file), run, source_factory=noise_factory,
                     execution=ExecutionConfig(engine="ray", ray_address=f"127.0.0.1:{port}"))
    assert not (run / "run.yaml").exists() and not (run / "generated").exists()


# --------------------------------------------------------------------------------------------------
# Job shares (Slurm arrays): no process group


def test_job_shares_make_the_shards_of_one_process_and_a_plain_run_finishes(tmp_path, class_file):
    """Three jobs of a share, each alone (no process group), give the shards of one plain run byte for byte; with
    one job lost, a later plain run makes exactly its shards; the job that finds every shard done records the stage."""
    cfg = fake_cfg(class_file)
    plain, shared = tmp_path / "plain", tmp_path / "shared"
    assert run_generate(cfg, plain, source_factory=noise_factory).done
    results = [run_generate(cfg, shared, source_factory=noise_factory,
                            execution=ExecutionConfig(job_index=i, num_jobs=3)) for i in (2, 0)]
    assert [r.done for r in results] == [False, False]
    made = sorted(p.name for p in (shared / "generated").glob("*.tar"))
    assert made == [f"{s:05d}.tar" for s in range(4) if s % 3 in (0, 2)]  # 15 images, shards of 4: 4 shards
    assert read_state(shared, "generate") is None
    result = run_generate(cfg, shared, source_factory=noise_factory)  # job 1 was lost: the plain run finishes
    assert result.done and result.shards_made == 1
    assert tars(shared) == tars(plain) and stats_without_timing(shared) == stats_without_timing(plain)
    assert keys(shared) == sorted(planned_keys(plain))
    again = tmp_path / "again"
    for i in range(3):
        last = run_generate(cfg, again, source_factory=noise_factory, execution=ExecutionConfig(job_index=i,
                                                                                                num_jobs=3))
    assert last.done and read_state(again, "generate") is not None and tars(again) == tars(plain)
    with pytest.raises(UserError, match="--top-up plans new indices once"):
        run_generate(cfg, again, top_up=True, source_factory=noise_factory,
                     execution=ExecutionConfig(job_index=0, num_jobs=3))
    assert not (again / "markers" / "generate").exists() or not any((again / "markers" / "generate").iterdir())


@pytest.mark.slow
def test_separate_job_processes_at_once_equal_one_process(tmp_path, class_file):
    """Two ``generate --job-index I --num-jobs 2`` processes started together (the tiny SD pipeline), and a Slurm
    array's third task given by its environment, write the same tars as one plain process."""
    base = ["generate", "--classes", str(class_file), "--model", "tiny-random", "--images-per-class", "4",
            "--shard-size", "3", "--batch-size", "2", "--resolution", "32", "--steps", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    plain, jobs = tmp_path / "plain", tmp_path / "jobs"
    procs = [subprocess.Popen([sys.executable, "-m", "imagenet_plus", *base, "--out", str(jobs), "--job-index",
                               str(i), "--num-jobs", "2"], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    r = subprocess.run([sys.executable, "-m", "imagenet_plus", *base, "--out", str(plain)], env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-2000:]
    assert tars(jobs) == tars(plain) and len(tars(plain)) == 4
    assert read_state(jobs, "generate") is not None  # the job that ended last found every shard done
    slurm = dict(env, SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="4")
    again = tmp_path / "again"  # task 5 of --array=4-5: index 1 of 2 → shards 1 and 3
    r = subprocess.run([sys.executable, "-m", "imagenet_plus", *base, "--out", str(again)], env=slurm,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tars(again) == {k: v for k, v in tars(plain).items() if k in ("00001.tar", "00003.tar")}


def _scores(run: Path) -> dict[str, object]:
    import pandas as pd

    out: dict[str, object] = {}
    for p in sorted((run / "scores").glob("*.parquet")):
        if p.name[:5].isdigit():
            out[p.name] = pd.read_parquet(p)
    for p in sorted((run / "scores").glob("0*.npy")):
        out[p.name] = np.load(p)
    return out


def _same_scores(a: Path, b: Path) -> None:
    sa, sb = _scores(a), _scores(b)
    assert sorted(sa) == sorted(sb) and sa
    for name, value in sa.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, sb[name], err_msg=name)
        else:
            value.equals(sb[name]) or pytest.fail(f"{name} differs")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_score_job_shares_then_a_plain_score(tmp_path):
    """Two jobs of a share score their shards (no dataset pass, no RUN/.lock); a plain ``score`` then only runs the
    dataset pass: the scores equal those of one process."""
    from imagenet_plus.score import ScoreConfig, run_score

    cfg = ScoreConfig(**TINY_SCORERS)
    plain = write_fake_run(tmp_path / "plain", per_class=2, shard_size=2, size=32)
    jobs = write_fake_run(tmp_path / "jobs", per_class=2, shard_size=2, size=32)
    summary = run_score(plain, cfg)
    assert summary is not None
    for i in range(2):
        assert run_score(jobs, cfg, execution=ExecutionConfig(job_index=i, num_jobs=2)) is None
        scored = sorted(p.name for p in (jobs / "scores").glob("*.stats.json"))
        assert scored == [f"{s:05d}.stats.json" for s in range(3) if s % 2 <= i]
        assert not (jobs / "scores" / "summary.json").exists()
    again = run_score(jobs, cfg)
    assert again is not None and again.num_images == summary.num_images == 6
    assert again.inception_score_mean == pytest.approx(summary.inception_score_mean)
    _same_scores(jobs, plain)


# --------------------------------------------------------------------------------------------------
# Ray: one local cluster for the module (starting Ray takes seconds)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs, shared by the module's tests. Its workers (not this process) have
    ``HANG_FILE_ENV`` = ``ray_cluster.hang``: the first ``NoiseSource`` call in a worker writes its pid there and
    hangs (only the kill test uses ``NoiseSource`` on Ray)."""
    ray = pytest.importorskip("ray")
    hang = tmp_path_factory.mktemp("ray") / "hang.pid"
    # workers import the package and the test helpers (ray_helpers) the driver pickled by name
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {HANG_FILE_ENV: str(hang)}})
    ray.hang = hang
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_generate_on_ray_equals_the_plain_run(tmp_path, class_file, ray_cluster):
    """The tiny SD pipeline: ``--engine ray`` on a local cluster of 2 workers writes the tars of a plain run."""
    import torch

    cfg = GenerateConfig(classes=str(class_file), model="tiny-random", images_per_class=4, shard_size=3,
                         batch_size=2, resolution=32, steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker of one CPU: the same kernels
    try:
        assert run_generate(cfg, tmp_path / "plain").done
    finally:
        torch.set_num_threads(threads)
    result = run_generate(cfg, tmp_path / "ray", execution=ExecutionConfig(engine="ray"))
    assert result.done and result.shards_made == 4
    assert tars(tmp_path / "ray") == tars(tmp_path / "plain")
    assert stats_without_timing(tmp_path / "ray") == stats_without_timing(tmp_path / "plain")
    assert read_state(tmp_path / "ray", "generate") is not None
    assert run_generate(cfg, tmp_path / "ray", execution=ExecutionConfig(engine="ray")).shards_made == 0


@pytest.mark.slow
def test_a_killed_ray_worker_is_restarted_and_its_shard_made_again(tmp_path, class_file, ray_cluster):
    """The first worker to make a shard writes its pid and hangs; the test kills that process (SIGKILL): Ray restarts
    the worker, the shard is retried, and the run ends with exactly the planned keys."""
    hang = ray_cluster.hang  # the workers' HANG_FILE_ENV: the first NoiseSource call of a worker hangs
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (hang.is_file() and hang.read_text().strip()):
            time.sleep(0.1)
        pid = int(hang.read_text())
        os.kill(pid, 9)
        killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    cfg = fake_cfg(class_file, images_per_class=4, shard_size=2)
    run = tmp_path / "run"
    result = run_generate(cfg, run, source_factory=noise_factory, execution=ExecutionConfig(engine="ray"))
    thread.join(timeout=5)
    assert killed and killed[0] != os.getpid()
    assert result.done and keys(run) == sorted(planned_keys(run)) and len(keys(run)) == 12
    assert not list((run / "generated").glob("*.partial"))
    plain = tmp_path / "plain"
    run_generate(cfg, plain, source_factory=noise_factory)
    assert tars(run) == tars(plain)


@pytest.mark.slow
def test_score_on_ray_equals_the_plain_score(tmp_path, ray_cluster):
    """Pass 1 on the Ray cluster, the dataset pass on the driver: the scores of one process."""
    import torch

    from imagenet_plus.score import ScoreConfig, run_score

    cfg = ScoreConfig(**TINY_SCORERS)
    plain = write_fake_run(tmp_path / "plain", per_class=2, shard_size=2, size=32)
    on_ray = write_fake_run(tmp_path / "ray", per_class=2, shard_size=2, size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_score(plain, cfg)
    finally:
        torch.set_num_threads(threads)
    got = run_score(on_ray, cfg, execution=ExecutionConfig(engine="ray"))
    assert got is not None and summary is not None and got.num_images == summary.num_images == 6
    _same_scores(on_ray, plain)
    assert read_state(on_ray, "score") is not None


@pytest.mark.slow
def test_ray_workers_write_to_a_bucket_with_the_drivers_storage_options(tmp_path, class_file, ray_cluster, s3,
                                                                        monkeypatch):
    """The Ray recipe of docs/cluster.md: ``--engine ray --out s3://…`` against a moto S3 server. The workers were
    started before the endpoint was known (as on a cluster, they do not share the driver's environment): they reach
    the bucket through the driver's storage options alone, and write the tars of a plain local run."""
    import boto3

    from imagenet_plus.io.storage import STORAGE_OPTIONS_ENV

    ray_cluster.hang.touch()  # no worker hangs here (the killed-worker test is the one that needs it)
    cfg = fake_cfg(class_file)
    assert run_generate(cfg, tmp_path / "plain", source_factory=noise_factory).done
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"endpoint_url": s3.endpoint, "key": "testing",
                                                        "secret": "testing"}))
    result = run_generate(cfg, "s3://bucket/ray-run", source_factory=noise_factory,
                          execution=ExecutionConfig(engine="ray"))
    assert result.done and result.shards_made == 4
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")  # an independent reader
    names = sorted(k for k in s3.keys("bucket", "ray-run/generated/") if k.endswith(".tar"))
    got = {n.rsplit("/", 1)[1]: client.get_object(Bucket="bucket", Key=n)["Body"].read() for n in names}
    assert got == tars(tmp_path / "plain")
    assert not [k for k in s3.keys("bucket", "ray-run/") if ".partial" in k]


@pytest.mark.slow
def test_a_worker_that_cannot_reach_the_bucket_is_one_line(tmp_path, class_file, ray_cluster, s3, monkeypatch):
    """The driver has credentials (the moto fixture's environment), the workers do not (they were started before it,
    as nodes configured without them): the run stops with one line giving the worker's own error, not a retry loop
    ending in "worker died"."""
    from imagenet_plus.io.storage import STORAGE_OPTIONS_ENV

    ray_cluster.hang.touch()
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"endpoint_url": s3.endpoint}))
    with pytest.raises(UserError, match=r"^a Ray worker could not start: .*credentials") as info:
        run_generate(fake_cfg(class_file), "s3://bucket/no-creds-run", source_factory=noise_factory,
                     execution=ExecutionConfig(engine="ray"))
    assert "\n" not in info.value.message
    assert not [k for k in s3.keys("bucket", "no-creds-run/generated/") if k.endswith(".tar")]
