"""The generate stage: schema, determinism, resume, extension, regeneration, multi-process, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenet_plus.contract import RunPaths, SelectionSummary
from imagenet_plus.errors import UserError
from imagenet_plus.generate import planned_keys, run_generate, shard_stats, stage_inputs
from imagenet_plus.generate.config import GenerateConfig, load_generate_config
from imagenet_plus.generate.stage import is_black
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.freshness import is_current, read_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def class_file(tmp_path: Path) -> Path:
    f = tmp_path / "classes.csv"
    f.write_text("name,description\nred apple,a red fruit\ngreen pear,a green fruit\nyellow lemon.v2,a sour fruit\n")
    return f


class FakeSource:
    """Image = noise from the seed alone; black for seeds in ``black``, NSFW for seeds in ``nsfw``."""

    scheduler_name = "FakeScheduler"

    def __init__(self, size: int = 32, black: frozenset = frozenset(), nsfw: frozenset = frozenset()):
        self.size, self.black, self.nsfw = size, black, nsfw
        self.calls: list[list[int]] = []

    def __call__(self, prompts, negatives, seeds):
        self.calls.append(list(seeds))
        images = []
        for s in seeds:
            if s in self.black or s in self.nsfw:
                arr = np.zeros((self.size, self.size, 3), np.uint8)
            else:
                arr = np.random.default_rng(s).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
            images.append(Image.fromarray(arr))
        return images, [s in self.nsfw for s in seeds]


def fake_factory(source: FakeSource):
    return lambda cfg, device: source


def make_cfg(class_file: Path, **kw) -> GenerateConfig:
    base = dict(classes=str(class_file), images_per_class=5, model="fake/model", steps=1, guidance=0.0,
                resolution=32, batch_size=3, shard_size=4, prompt_strategy=("name", "hypernym", "diverse"))
    base.update(kw)
    return GenerateConfig(**base)


def _selection(run: Path, short: dict[str, int], pass_rate: dict[str, float]) -> None:
    """A ``RUN/selection.json`` as select writes it, with the classes short of their quota."""
    SelectionSummary(thresholds={}, per_class_quota=2, pass_rate=pass_rate, kept={}, short=short, dropped_classes=[],
                     flagged_classes=[], reasons={}, num_kept=0, num_scored=6).write(RunPaths(run).selection_json)


def _keys_by_shard(run: Path) -> list[list[str]]:
    return [[s["__key__"] for s in iter_shard(tar)] for tar in sorted((run / "generated").glob("*.tar"))]


def read_run(run: Path) -> dict[str, dict]:
    samples = {}
    for tar in sorted((run / "generated").glob("*.tar")):
        for s in iter_shard(tar):
            assert s["__key__"] not in samples, "duplicate key"
            samples[s["__key__"]] = s
    return samples


def test_shards_follow_the_schema(tmp_path, class_file):
    run = tmp_path / "run"
    res = run_generate(make_cfg(class_file), run, source_factory=fake_factory(FakeSource()))
    assert res.done and res.num_shards == 4  # 15 images / 4 per shard
    samples = read_run(run)
    assert sorted(samples) == sorted(planned_keys(run))
    assert len(samples) == 15
    members = {tuple(sorted(s)) for s in samples.values()}
    assert members == {("__key__", "cls", "jpg", "json")}
    classes = json.loads((run / "classes.json").read_text())
    assert [c["label"] for c in classes] == [0, 1, 2]
    for key, s in samples.items():
        assert "." not in key
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["label"]
        assert key == f"{meta['class_id']}_{meta['index']:06d}"
        for field in ("class_id", "class_name", "label", "prompt", "negative_prompt", "seed", "model", "scheduler",
                      "steps", "guidance", "width", "height", "attempt", "nsfw", "strategy"):
            assert field in meta
        assert meta["class_name"].lower().split()[0] in meta["prompt"].lower()
        assert Image.open(__import__("io").BytesIO(s["jpg"])).format == "JPEG"
    stats = shard_stats(run)
    assert sum(st.count for st in stats) == 15
    assert all(st.failures == 0 for st in stats)
    assert [(st.first_key, st.last_key) for st in stats] == [(k[0], k[-1]) for k in _keys_by_shard(run)]
    # run.yaml records the resolved config, its hash and versions
    import yaml

    ry = yaml.safe_load((run / "run.yaml").read_text())
    assert ry["config"]["images_per_class"] == 5 and ry["config_hash"] and "torch" in ry["versions"]


def test_rerun_is_a_noop_and_same_seed_gives_same_bytes(tmp_path, class_file):
    a, b = tmp_path / "a", tmp_path / "b"
    run_generate(make_cfg(class_file), a, source_factory=fake_factory(FakeSource()))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (a / "generated").iterdir()}
    src = FakeSource()
    res = run_generate(make_cfg(class_file), a, source_factory=fake_factory(src))
    assert res.images_made == 0 and src.calls == []
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (a / "generated").iterdir()} == before
    # another folder, another batch size: same seeds, prompts and bytes per key
    run_generate(make_cfg(class_file, batch_size=2), b, source_factory=fake_factory(FakeSource()))
    for tar in sorted((a / "generated").glob("*.tar")):
        assert tar.read_bytes() == (b / "generated" / tar.name).read_bytes()


def test_batch_size_does_not_change_seed_or_prompt(tmp_path, class_file):
    a, b = tmp_path / "a", tmp_path / "b"
    run_generate(make_cfg(class_file, batch_size=1), a, source_factory=fake_factory(FakeSource()))
    run_generate(make_cfg(class_file, batch_size=5), b, source_factory=fake_factory(FakeSource()))
    sa, sb = read_run(a), read_run(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        ma, mb = json.loads(sa[k]["json"]), json.loads(sb[k]["json"])
        assert (ma["seed"], ma["prompt"], ma["strategy"]) == (mb["seed"], mb["prompt"], mb["strategy"])
    # strategies are picked per image: with 15 images all three appear
    assert {json.loads(s["json"])["strategy"] for s in sa.values()} == {"name", "hypernym", "diverse"}
    # a different global seed changes the seeds
    c = tmp_path / "c"
    run_generate(make_cfg(class_file, seed=1), c, source_factory=fake_factory(FakeSource()))
    sc = read_run(c)
    assert all(json.loads(sc[k]["json"])["seed"] != json.loads(sa[k]["json"])["seed"] for k in sa)


def test_black_and_nsfw_images_are_regenerated_with_the_next_seed(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file, images_per_class=2), tmp_path / "probe",
                 source_factory=fake_factory(FakeSource()))
    metas = {k: json.loads(s["json"]) for k, s in read_run(tmp_path / "probe").items()}
    keys = sorted(metas)
    black_seed = metas[keys[0]]["seed"]  # black at attempt 0, fine at attempt 1
    nsfw_seed = metas[keys[1]]["seed"]  # NSFW at every attempt → kept, flagged, listed
    always = frozenset(nsfw_seed + a for a in range(3))
    src = FakeSource(black=frozenset({black_seed}), nsfw=always)
    run_generate(make_cfg(class_file, images_per_class=2, max_attempts=3), run, source_factory=fake_factory(src))
    got = {k: json.loads(s["json"]) for k, s in read_run(run).items()}
    assert sorted(got) == keys
    assert got[keys[0]]["attempt"] == 1 and got[keys[0]]["seed"] == black_seed + 1
    assert got[keys[1]]["attempt"] == 2 and got[keys[1]]["nsfw"] is True
    stats = shard_stats(run)
    assert sum(st.regenerated["black"] for st in stats) == 1
    assert sum(st.regenerated["nsfw"] for st in stats) == 2
    assert [k for st in stats for k in st.failed_keys] == [keys[1]]
    assert is_black(Image.new("RGB", (8, 8)), 4.0) and not is_black(Image.new("RGB", (8, 8), "white"), 4.0)


def test_more_images_per_class_adds_new_indices_only(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file, images_per_class=2), run, source_factory=fake_factory(FakeSource()))
    old = {p.name: p.read_bytes() for p in (run / "generated").glob("*.tar")}
    src = FakeSource()
    res = run_generate(make_cfg(class_file, images_per_class=3), run, source_factory=fake_factory(src))
    assert res.images_made == 3 and res.done
    for name, data in old.items():
        assert (run / "generated" / name).read_bytes() == data
    keys = sorted(read_run(run))
    assert keys == sorted(planned_keys(run)) and len(keys) == 9
    with pytest.raises(UserError, match="already has 3 images per class"):
        run_generate(make_cfg(class_file, images_per_class=2), run, source_factory=fake_factory(FakeSource()))


def test_top_up_generates_new_indices_for_short_classes(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file, images_per_class=2), run, source_factory=fake_factory(FakeSource()))
    classes = json.loads((run / "classes.json").read_text())
    short_id = classes[1]["id"]
    _selection(run, short={short_id: 1}, pass_rate={short_id: 0.5})
    res = run_generate(make_cfg(class_file, images_per_class=2), run, top_up=True,
                       source_factory=fake_factory(FakeSource()))
    assert res.images_made == 2  # ceil(1 / 0.5)
    keys = set(read_run(run))
    assert {f"{short_id}_000002", f"{short_id}_000003"} <= keys and len(keys) == 8
    # the same selection does not top up twice
    res = run_generate(make_cfg(class_file, images_per_class=2), run, top_up=True,
                       source_factory=fake_factory(FakeSource()))
    assert res.images_made == 0 and len(read_run(run)) == 8


def test_other_config_in_same_run_is_refused_and_changes_nothing(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file), run, source_factory=fake_factory(FakeSource()))
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"another config \(guidance: 0.0 → 3.0\)"):
        run_generate(make_cfg(class_file, guidance=3.0), run, source_factory=fake_factory(FakeSource()))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    # editing the class file changes the class set: refused too
    class_file.write_text(class_file.read_text().replace("red apple", "red cherry"))
    with pytest.raises(UserError, match="another config"):
        run_generate(make_cfg(class_file), run, source_factory=fake_factory(FakeSource()))


def test_leftovers_of_a_crash_are_removed_and_redone(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file), run, source_factory=fake_factory(FakeSource()))
    gen = run / "generated"
    good = (gen / "00001.tar").read_bytes()
    # a kill leaves a partial tar, or a finished tar whose stats were never written
    (gen / "00002.tar.partial").write_bytes(b"garbage")
    (gen / "00001.json").unlink()
    (gen / "00003.tar").write_bytes(good[:1000])
    (gen / "00003.json").unlink()
    res = run_generate(make_cfg(class_file), run, source_factory=fake_factory(FakeSource()))
    assert res.shards_made == 2 and res.done
    assert not list(gen.glob("*.partial"))
    assert (gen / "00001.tar").read_bytes() == good
    assert sorted(read_run(run)) == sorted(planned_keys(run))


def test_generate_is_current_after_a_run_and_not_after_images_per_class_grows(tmp_path, class_file):
    run = tmp_path / "run"
    paths = RunPaths(run)
    cfg = make_cfg(class_file)
    assert not is_current(paths, stage_inputs(run, cfg)) and not run.exists()  # asking writes nothing
    run_generate(cfg, run, source_factory=fake_factory(FakeSource()))
    inputs = stage_inputs(run, cfg)
    assert is_current(paths, inputs)
    # what it declares: the config hash and the plan (settings), the done shards' stats, every planned shard
    ry = __import__("yaml").safe_load(paths.run_yaml.read_text())
    assert inputs.settings == {"config_hash": ry["config_hash"], "segments": ry["segments"]}
    assert list(inputs.files) == sorted(paths.generated.glob("*.json")) and len(inputs.files) == 4
    assert sorted(inputs.outputs) == sorted(paths.generated.iterdir())
    assert read_state(paths, "generate").facts == {"num_shards": 4, "num_planned": 15}
    # settings that change no image (batch size) leave it current
    assert is_current(paths, stage_inputs(run, make_cfg(class_file, batch_size=1)))
    # more images per class: a new segment, not current until generate made them
    bigger = make_cfg(class_file, images_per_class=6)
    assert not is_current(paths, stage_inputs(run, bigger))
    run_generate(bigger, run, source_factory=fake_factory(FakeSource()))
    assert is_current(paths, stage_inputs(run, bigger))
    # a shard made again (a deleted tar) is a new input, and a deleted output is not current
    (paths.generated / "00001.tar").unlink()
    assert not is_current(paths, stage_inputs(run, bigger))
    run_generate(bigger, run, source_factory=fake_factory(FakeSource()))
    assert is_current(paths, stage_inputs(run, bigger))


def test_hand_edited_shard_stats_are_named(tmp_path, class_file):
    run = tmp_path / "run"
    run_generate(make_cfg(class_file, images_per_class=1), run, source_factory=fake_factory(FakeSource()))
    stats = run / "generated" / "00000.json"
    data = json.loads(stats.read_text())
    stats.write_text(json.dumps({**data, "count": "three"}))
    with pytest.raises(UserError, match=r"00000.json: key 'count' must be an integer, got 'three'"):
        shard_stats(run)
    del data["rank"]
    stats.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"00000.json: missing key\(s\) 'rank'"):
        shard_stats(run)


# --------------------------------------------------------------------------------------------------
# The CLI, bad input: one line, exit 2, nothing changed


def cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "imagenet_plus", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--images-per-class", "0"], "'images-per-class' must be positive, got 0"),
        (["--steps", "0"], "'steps' must be positive"),
        (["--batch-size", "-2"], "'batch-size' must be positive"),
        (["--resolution", "100"], "'resolution' must be a multiple of 8, got 100"),
        (["--model", "./no/such/model"], "model path not found: ./no/such/model"),
        (["--classes", "nosuch-spec"], "nosuch-spec"),
    ],
)
def test_cli_bad_flags(tmp_path, class_file, args, culprit):
    out = tmp_path / "run"
    base = ["generate", "--out", str(out), "--classes", str(class_file), "--model", "tiny-random"]
    r = cli(*base, *args)
    assert r.returncode == 2, r.stderr
    assert culprit in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any((out / "generated").glob("*.tar"))


def test_cli_bad_config_file_and_out(tmp_path, class_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-random\nimages_per_clas: 3\n")
    r = cli("generate", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and f"{cfg}: unknown key 'images_per_clas'" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text("model: tiny-random\n  bad: [indent\n")
    r = cli("generate", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "malformed YAML" in r.stderr and "Traceback" not in r.stderr
    f = tmp_path / "afile"
    f.write_text("x")
    r = cli("generate", "--out", str(f), "--classes", str(class_file), "--model", "tiny-random")
    assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "x"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------
# Real tiny pipeline, real processes


#: The tiny pipeline of each family and the scheduler its images record.
FAMILIES = {
    "tiny-random": "EulerDiscreteScheduler",
    "tiny-random-flux": "FlowMatchEulerDiscreteScheduler",
    "tiny-random-sd3": "FlowMatchEulerDiscreteScheduler",
}


def tiny_args(out: Path, class_file: Path, *extra: str, model: str = "tiny-random") -> list[str]:
    return ["generate", "--out", str(out), "--classes", str(class_file), "--model", model,
            "--images-per-class", "4", "--shard-size", "3", "--batch-size", "2", "--resolution", "32",
            "--steps", "2", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("model", list(FAMILIES))
def test_tiny_pipeline_end_to_end_and_identical_bytes(tmp_path, class_file, model):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli(*tiny_args(a, class_file, model=model))
    assert r.returncode == 0, r.stderr
    assert "generate" in r.stderr  # progress/summary on stderr
    r = cli(*tiny_args(b, class_file, "--batch-size", "3", model=model))
    assert r.returncode == 0, r.stderr
    sa, sb = read_run(a), read_run(b)
    assert sorted(sa) == sorted(planned_keys(a)) and len(sa) == 12
    for k in sa:
        ma, mb = json.loads(sa[k]["json"]), json.loads(sb[k]["json"])
        assert (ma["seed"], ma["prompt"]) == (mb["seed"], mb["prompt"])
        assert ma["scheduler"] == FAMILIES[model] and ma["model"] == model
        # on CPU the image bytes do not depend on the batch size either (documented: on a GPU, batched
        # kernels may round differently, so only seed and prompt are promised there)
        assert sa[k]["jpg"] == sb[k]["jpg"], k
    # run.yaml records the family and the settings used
    import yaml

    recorded = yaml.safe_load((a / "run.yaml").read_text())["config"]
    from imagenet_plus.models.registry import MODELS

    assert recorded["family"] == MODELS[model].family and recorded["steps"] == 2
    assert recorded["max_sequence_length"] == MODELS[model].max_sequence_length
    # same settings → identical bytes
    c = tmp_path / "c"
    assert cli(*tiny_args(c, class_file, model=model)).returncode == 0
    for tar in (a / "generated").glob("*.tar"):
        assert tar.read_bytes() == (c / "generated" / tar.name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("model", list(FAMILIES))
def test_sigkill_inside_a_shard_resumes_to_exactly_the_planned_keys(tmp_path, class_file, model):
    run = tmp_path / "run"
    args = tiny_args(run, class_file, "--shard-size", "2", "--batch-size", "1", "--images-per-class", "6",
                     model=model)
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_plus", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    gen = run / "generated"
    deadline = time.time() + 180
    # kill once at least one shard is done and another is being written
    while time.time() < deadline:
        if gen.is_dir() and list(gen.glob("*.json")) and list(gen.glob("*.tar.partial")):
            break
        if proc.poll() is not None:
            pytest.fail("generate finished before it could be killed")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(gen.glob("*.partial")), "the kill should leave a partial shard"
    done_before = {p.name for p in gen.glob("*.json")}
    assert 0 < len(done_before) < 9
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert not list(gen.glob("*.partial"))
    keys = sorted(read_run(run))
    assert keys == sorted(planned_keys(run)) and len(keys) == 18


@pytest.mark.slow
@pytest.mark.parametrize("model", list(FAMILIES))
def test_torchrun_two_processes_split_shards(tmp_path, class_file, model):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = 29517 + list(FAMILIES).index(model)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "imagenet_plus", *tiny_args(run, class_file, model=model)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = {st.shard: st.rank for st in shard_stats(run)}
    assert stats == {f"{s:05d}": s % 2 for s in range(4)}
    keys = []
    for tar in sorted((run / "generated").glob("*.tar")):
        keys += [s["__key__"] for s in iter_shard(tar)]
    assert len(keys) == len(set(keys)) == 12
    assert sorted(keys) == sorted(planned_keys(run))
    # the ranks met at the end through marker files, not a collective
    from imagenet_plus.contract import RunPaths

    done = sorted(p.name for p in (RunPaths(run).markers / "generate").glob("*/rank-*.done"))
    assert done == ["rank-00000.done", "rank-00001.done"]


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--model", "tiny-random-flux", "--negative-prompt", "blurry"], "'negative-prompt' is not supported"),
        (["--model", "someone/unknown-model"], "model 'someone/unknown-model' has no preset: give 'steps'"),
        # importing torch to look for a GPU takes seconds on a busy 2-core machine
        pytest.param(["--offload", "model"], "--offload model", marks=pytest.mark.slow),
        (["--model", "tiny-random", "--max-sequence-length", "77"], "'max-sequence-length' is for T5-based"),
    ],
)
def test_cli_family_settings_it_cannot_take(tmp_path, class_file, args, culprit):
    out = tmp_path / "run"
    r = cli("generate", "--out", str(out), "--classes", str(class_file), "--model", "tiny-random-flux", *args)
    assert r.returncode == 2, r.stderr
    assert culprit in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def test_load_generate_config_from_cli_names(tmp_path, class_file):
    f = tmp_path / "c.yaml"
    f.write_text(f"classes: {class_file}\nmodel: tiny-random\nimages-per-class: 2\n")
    cfg = load_generate_config(f, {"batch_size": 5})
    assert cfg.images_per_class == 2 and cfg.batch_size == 5


def test_negative_prompt_reaches_the_model_and_the_json(tmp_path, class_file):
    from imagenet_plus.classes.prompts import DEFAULT_NEGATIVE_PROMPT

    seen = []

    class Recording(FakeSource):
        def __call__(self, prompts, negatives, seeds):
            seen.extend(negatives)
            return super().__call__(prompts, negatives, seeds)

    run = tmp_path / "run"
    run_generate(make_cfg(class_file, images_per_class=1, negative_prompt="default"), run,
                 source_factory=fake_factory(Recording()))
    assert seen == [DEFAULT_NEGATIVE_PROMPT] * 3
    assert {json.loads(s["json"])["negative_prompt"] for s in read_run(run).values()} == {DEFAULT_NEGATIVE_PROMPT}


def _every_stage_declares_its_inputs() -> bool:
    from imagenet_plus import diagnose, generate, release, report, score, select

    return all(hasattr(face, "stage_inputs") for face in (generate, score, diagnose, select, release, report))


@pytest.mark.slow
@pytest.mark.skipif(not _every_stage_declares_its_inputs(), reason="a stage package does not offer stage_inputs yet")
def test_tiny_flux_run_scores_selects_releases_and_reports_with_its_license(tmp_path):
    """The demo config with the tiny FLUX pipeline: every later stage runs, and the card's license is the model's."""
    import yaml

    from imagenet_plus.models.registry import model_license

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update({"model": "tiny-random-flux", "resolution": 32, "steps": 2, "guidance": 3.5, "images-per-class": 4,
                "shard-size": 4})
    cfg["select"]["per-class"] = 3
    cfg["release"]["shard-size"] = 4
    cfg["report"]["sheet-images"] = 3
    path = tmp_path / "flux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    r = cli("run", "--config", str(path), "--out", str(run), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert yaml.safe_load((run / "run.yaml").read_text())["config"]["family"] == "flux"
    card = (run / "release" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    lic, _, _, note = model_license("tiny-random-flux")
    assert header["license"] == lic
    assert "tiny-random-flux" in card
    assert (run / "report" / "index.html").is_file()


# --------------------------------------------------------------------------------------------------
# generate --top-up --remedy: the prompt strategy that diagnose names, for the new indices of flagged classes


def _short_selection_and_diagnosis(run: Path, strategies: dict[str, str]) -> list[dict]:
    classes = json.loads((run / "classes.json").read_text())
    short = {classes[0]["id"]: 1, classes[1]["id"]: 1}
    _selection(run, short=short, pass_rate={k: 0.5 for k in short})
    (run / "diagnosis.json").write_text(json.dumps({"verdict_counts": {}, "strategies": strategies}))
    return classes


def test_top_up_remedy_switches_strategy_of_flagged_classes_on_new_indices_only(tmp_path, class_file):
    import yaml

    from imagenet_plus.classes.prompts import build_prompt
    from imagenet_plus.classes.sets import read_classes_json
    from imagenet_plus.generate.plan import image_seed

    cfg = make_cfg(class_file, images_per_class=2, prompt_strategy=("name",))
    plain, fixed = tmp_path / "plain", tmp_path / "fixed"
    for run in (plain, fixed):
        run_generate(cfg, run, source_factory=fake_factory(FakeSource()))
    classes = _short_selection_and_diagnosis(plain, {})
    flagged = classes[1]["id"]
    _short_selection_and_diagnosis(fixed, {flagged: "gloss"})
    run_generate(cfg, plain, top_up=True, source_factory=fake_factory(FakeSource()))
    res = run_generate(cfg, fixed, top_up=True, remedy=True, source_factory=fake_factory(FakeSource()))
    assert res.images_made == 4  # two short classes, ceil(1 / 0.5) each
    a, b = read_run(plain), read_run(fixed)
    assert set(a) == set(b) and len(b) == 10
    cls_of = {c.id: c for c in read_classes_json(fixed / "classes.json")}
    for key, sample in b.items():
        meta = json.loads(sample["json"])
        other = json.loads(a[key]["json"])
        assert meta["seed"] == other["seed"] == image_seed(cfg.seed, meta["class_id"], meta["index"])
        if meta["class_id"] == flagged and meta["index"] >= 2:  # the flagged class's new indices
            assert meta["strategy"] == "gloss"
            assert meta["prompt"] == build_prompt(cls_of[flagged], "gloss", meta["seed"]) != other["prompt"]
        else:  # its old indices and every other class: as without --remedy, byte for byte
            assert meta == other and sample["jpg"] == a[key]["jpg"] and meta["strategy"] == "name"
    segments = yaml.safe_load((fixed / "run.yaml").read_text())["segments"]
    assert segments[-1]["kind"] == "top-up" and segments[-1]["strategies"] == [[1, "gloss"]]
    assert "strategies" not in yaml.safe_load((plain / "run.yaml").read_text())["segments"][-1]
    # the same top-up again: nothing new, nothing rewritten
    before = {p.name: p.stat().st_mtime_ns for p in (fixed / "generated").iterdir()}
    res = run_generate(cfg, fixed, top_up=True, remedy=True, source_factory=fake_factory(FakeSource()))
    assert res.images_made == 0 and {p.name: p.stat().st_mtime_ns for p in (fixed / "generated").iterdir()} == before


def test_remedy_needs_a_diagnosis_and_known_classes(tmp_path, class_file):
    cfg = make_cfg(class_file, images_per_class=2)
    run = tmp_path / "run"
    run_generate(cfg, run, source_factory=fake_factory(FakeSource()))
    _short_selection_and_diagnosis(run, {"n99999999": "gloss"})
    with pytest.raises(UserError, match="unknown class id 'n99999999'"):
        run_generate(cfg, run, top_up=True, remedy=True, source_factory=fake_factory(FakeSource()))
    (run / "diagnosis.json").unlink()
    with pytest.raises(UserError, match="--remedy needs .*diagnosis.json.*imagenet-plus diagnose"):
        run_generate(cfg, run, top_up=True, remedy=True, source_factory=fake_factory(FakeSource()))
    with pytest.raises(UserError, match="--remedy only works with --top-up"):
        run_generate(cfg, run, remedy=True, source_factory=fake_factory(FakeSource()))
    assert len(read_run(run)) == 6  # nothing was added


def test_cli_remedy_without_top_up_is_one_line(tmp_path, class_file):
    out = tmp_path / "run"
    r = cli("generate", "--out", str(out), "--classes", str(class_file), "--model", "tiny-random", "--remedy")
    assert r.returncode == 2, r.stderr
    assert "--remedy only works with --top-up" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
