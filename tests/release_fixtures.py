"""Test helpers for select/release/publish/data: fake score files and a finished release, built in code.

``write_fake_scores`` writes ``RUN/scores/{shard}.parquet`` + ``.clip.npy`` + ``summary.json`` following
the scoring contract, for the samples that really are in ``RUN/generated``; ``make_release`` chains it
with the real ``select`` and ``release`` stages.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import fake_score_summary

from imagenet_plus.contract import RunPaths
from imagenet_plus.io.tar import iter_shard


def write_fake_scores(run: Path, seed: int = 0, dim: int = 16, dup_every: int = 0, nsfw_keys: tuple[str, ...] = (),
                      class_fid: dict[str, float] | None = None, low_clip_keys: tuple[str, ...] = (),
                      with_realism: bool = True) -> dict[str, list[str]]:
    """Write fake score files for every sample of ``run``; returns {class_id: [keys]}.

    Scores are deterministic functions of the sample index so tests can predict the composite:
    a higher index gives a lower clip score.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    paths = RunPaths(run)
    paths.scores.mkdir(parents=True, exist_ok=True)
    per_class: dict[str, list[str]] = {}
    for tar in sorted(paths.generated.glob("*.tar")):
        rows, embs = [], []
        for sample in iter_shard(tar):
            meta = json.loads(sample["json"])
            key, cid, i = sample["__key__"], meta["class_id"], meta["index"]
            per_class.setdefault(cid, []).append(key)
            dup = None
            if dup_every and i % dup_every == dup_every - 1:
                dup = f"{cid}_{i - 1:06d}"
            rows.append({
                "key": key, "label": meta["label"], "class_id": cid,
                "clip_score": (10.0 if key in low_clip_keys else 30.0 - 0.5 * i),
                "clip_class_score": 25.0, "clip_class_prob": 0.9 - 0.01 * i, "clip_class_rank": 1,
                "isc_kl": 1.0 + 0.01 * i, "classifier_top1": None, "classifier_top5": None, "classifier_prob": None,
                "realism": (1.2 if with_realism else None), "dup_of": dup, "nsfw": key in nsfw_keys,
                "attempt": 0,
            })
            v = rng.normal(size=dim)
            embs.append(v / np.linalg.norm(v))
        df = pd.DataFrame(rows)
        df["classifier_top1"] = df["classifier_top1"].astype("boolean")
        df["classifier_top5"] = df["classifier_top5"].astype("boolean")
        df["classifier_prob"] = df["classifier_prob"].astype("float64")
        df["realism"] = df["realism"].astype("float64")
        files = paths.score_files(tar.stem)
        df.to_parquet(files.parquet, index=False)
        np.save(files.clip, np.asarray(embs, dtype=np.float16))
    class_fid = class_fid or {}
    fake_score_summary({cid: {"fid": class_fid.get(cid, 50.0), "count": len(keys)} for cid, keys in per_class.items()},
                       models={"classifier": "none"}).write(paths.summary_json)
    return per_class


def make_release(tmp: Path, per_class: int = 8, quota: int = 6, val_per_class: int = 2, shard_size: int = 4,
                 imagefolder: Path | None = None, size: int = 32, license: str | None = None) -> Path:
    """A fake run → fake scores → real select → real release; returns the release folder."""
    from conftest import write_fake_run

    from imagenet_plus.release.stage import ReleaseConfig, run_release
    from imagenet_plus.select import SelectConfig, run_select

    run = write_fake_run(tmp / "run", per_class=per_class, shard_size=10, size=size)
    write_fake_scores(run)
    run_select(run, SelectConfig(per_class=quota))
    cfg = ReleaseConfig(val_per_class=val_per_class, shard_size=shard_size,
                        imagefolder=str(imagefolder) if imagefolder else None, license=license)
    return run_release(run, tmp / "rel", cfg)


def check_cli_error(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """A CliRunner result failed with a one-line UserError naming every needle, no traceback printed."""
    from imagenet_plus.errors import UserError

    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert isinstance(result.exception, UserError), repr(result.exception)
    msg = result.exception.message
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def run_cli(*args: str, env: dict[str, str | None] | None = None, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Run ``python -m imagenet_plus ARGS`` in a subprocess (``env`` values of None are removed)."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    return subprocess.run([sys.executable, "-m", "imagenet_plus", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def check_subprocess_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """Exit status 2, one last stderr line ``error: …`` naming every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr  # progress bars may come before it
    for n in needles:
        assert n in errors[0], errors[0]
