"""Caption + img2img from real images, end to end with the tiny models: generate (killed with SIGKILL, resumed) →
score → select → release; the samples' sources, the card's real-images licence, datasets reading the release, and
publish refusing a permissive licence for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from imagenet_plus.errors import UserError
from imagenet_plus.generate import planned_keys
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.publish.stage import PublishConfig, run_publish

REPO = Path(__file__).resolve().parents[2]
#: The first two ImageNet-1k classes (tench, goldfish) and the real images each gets.
REAL = {"n01440764": 3, "n01443537": 2}


def make_real(root: Path) -> Path:
    for c, (wnid, n) in enumerate(REAL.items()):
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (56, 40 + 8 * i), (40 + 100 * c, 60 * i, 120)).save(root / wnid / f"{wnid}_{i}.JPEG")
    return root


def write_config(path: Path, real: Path) -> Path:
    """The demo config's score/select/release sections (tiny scorers) with a caption + img2img generate part."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update({"class-limit": 2, "images-per-class": 6, "resolution": 32, "steps": 2, "batch-size": 1,
                "shard-size": 2, "guidance": [1.0, 5.0], "prompt-strategy": ["caption"], "real": str(real),
                "captioner": "tiny-random", "init-strength": 0.75})
    cfg.pop("diagnose", None)
    cfg["select"]["per-class"] = 4
    cfg["release"].update({"val-per-class": 1, "shard-size": 4})
    cfg["report"]["sheet-images"] = 3
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagenet_plus", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


@pytest.mark.slow
def test_caption_img2img_run_resumes_after_sigkill_and_releases_with_the_real_images_licence(tmp_path):
    real = make_real(tmp_path / "real")
    config = write_config(tmp_path / "run.yaml", real)
    run = tmp_path / "run"
    gen = run / "generated"
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_plus", "generate", "--config", str(config), "--out",
                             str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a shard is done and the next one is being written
        if gen.is_dir() and list(gen.glob("*.json")) and list(gen.glob("*.tar.partial")):
            break
        if proc.poll() is not None:
            pytest.fail("generate finished before it could be killed")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(gen.glob("*.partial")) and 0 < len(list(gen.glob("*.json"))) < 6
    assert len(list((run / "captions").glob("*.parquet"))) == 6  # every caption was written before the shards

    r = cli("run", "--config", str(config), "--out", str(run), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(gen.glob("*.partial"))
    metas = {}
    for tar in sorted(gen.glob("*.tar")):
        for s in iter_shard(tar):
            metas[s["__key__"]] = json.loads(s["json"])
    assert sorted(metas) == sorted(planned_keys(run)) and len(metas) == 12
    for m in metas.values():
        assert (real / m["source"]).is_file(), m["source"]
        assert m["source"].split("/")[0] == m["class_id"]
        assert m["init_strength"] == 0.75 and m["strategy"] == "caption"
        assert m["prompt"].startswith(f"{m['class_name']}, ") and m["caption"]
        assert 1.0 <= m["guidance"] <= 5.0
    recorded = yaml.safe_load((run / "run.yaml").read_text())["config"]
    assert recorded["real"] == str(real) and len(recorded["real_fingerprint"]) == 64

    rel = run / "release"
    card = (rel / "README.md").read_text()
    assert "## Real images" in card and f"`{real}`" in card
    assert "non-commercial research" in card and "image-net.org" in card
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "apache-2.0"  # the tiny model's: permissive
    # datasets reads the release with the real-image fields typed as the card declares them
    import datasets

    ds = datasets.load_dataset(str(rel), split="train")
    rows = ds.to_list()
    assert rows and all((real / row["json"]["source"]).is_file() for row in rows)
    assert ds.features["json"]["init_strength"].dtype == "float64"
    assert {row["json"]["source"] for row in rows} <= {m["source"] for m in metas.values()}
    # publish refuses the permissive licence of a release made from real images, unless told otherwise
    with pytest.raises(UserError, match=r"made from real images.*license: apache-2.0.*--allow-permissive-license"):
        run_publish(rel, PublishConfig(repo_id="someone/real-fake", dry_run=True))
    result = run_publish(rel, PublishConfig(repo_id="someone/real-fake", dry_run=True, allow_permissive_license=True))
    assert result.dry_run


@pytest.mark.slow
def test_two_processes_share_the_captions_and_descriptions(tmp_path):
    """torchrun, 2 ranks: each captions the real images of its shards; rank 0 writes the class descriptions and
    rank 1 waits for them; the shards are split by rank and every image is made exactly once."""
    from imagenet_plus.generate import shard_stats

    real = make_real(tmp_path / "real")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "imagenet_plus", "generate", "--out", str(run), "--classes", "imagenet-1k", "--class-limit", "2",
           "--model", "tiny-random", "--images-per-class", "4", "--shard-size", "2", "--batch-size", "2",
           "--resolution", "32", "--steps", "2", "--real", str(real), "--init-strength", "0.5",
           "--prompt-strategy", "caption,llm", "--captioner", "tiny-random", "--prompt-model", "tiny-random",
           "--llm-prompts-per-class", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {st.shard: st.rank for st in shard_stats(run)} == {f"{s:05d}": s % 2 for s in range(4)}
    described = json.loads((run / "llm_prompts.json").read_text())["descriptions"]
    metas = {}
    for tar in sorted((run / "generated").glob("*.tar")):
        for s in iter_shard(tar):
            metas[s["__key__"]] = json.loads(s["json"])
    assert sorted(metas) == sorted(planned_keys(run)) and len(metas) == 8
    for m in metas.values():
        assert (real / m["source"]).is_file() and m["init_strength"] == 0.5
        if m["strategy"] == "llm":
            assert any(m["prompt"] in (t, f"{m['class_name']}, {t}") for t in described[m["class_id"]])
        else:
            assert m["strategy"] == "caption" and m["prompt"] == f"{m['class_name']}, {m['caption']}"
    assert {m["strategy"] for m in metas.values()} == {"caption", "llm"}
