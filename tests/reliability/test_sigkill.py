"""Kill the trainer with SIGKILL at random moments, and aimed at the checkpoint-save
window, resume each time, and check that the run finishes with every metrics line
exactly once and the weights of an uninterrupted run (slow: about 30 s + 65 s).

    python -m pytest -m slow tests/reliability -q
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

ITERATIONS = 8


def _args(out, model):
    # the random tiny model gets reward 0 on sorting; the length reward makes the
    # advantages non-zero, so the weights change every iteration
    return [
        f"out={out}", f"model.path={model}", "data.tasks=[sort]", "data.train_per_level=20", "data.test_per_level=2",
        f"iterations={ITERATIONS}", "rollout.k=4", "rollout.prompts_per_iteration=4", "rollout.max_new_tokens=24",
        "rollout.segment_tokens=8", "reward.length_weight=1.0", "sampler.name=prioritized", "algorithm.lr=0.003",
        "eval.every=4", "threads=1", "checkpoint_every=1", "checkpoint_keep=2",
    ]


# `python -c SLOW_FSYNC train ...`: the command line with every os.fsync 0.1 s slower, which
# widens the checkpoint-save window (each file of the temporary folder, then `latest`)
SLOW_FSYNC = ("import os, sys, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep(0.1), fsync(fd))[1]; "
              "from k15rl.cli import main; sys.exit(main(sys.argv[1:]))")


def _train(*argv, entry=("-m", "k15rl.cli")):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, *entry, "train", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _same_run(ref, run, model, iterations=ITERATIONS):
    """`run` ended with the final weights and metrics of the uninterrupted run `ref`."""
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], load_file(model / "model.safetensors")[k]) for k in a)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, iterations + 1))
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("reward/mean") for r in rows] == [r.get("reward/mean") for r in ref_rows]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path, tiny_model_dir):
    ref = tmp_path / "ref"
    t0 = time.time()
    p = _train(*_args(ref, tiny_model_dir))
    assert p.wait() == 0, p.stderr.read().decode()
    duration = time.time() - t0

    run, rng, kills = tmp_path / "run", random.Random(0), 0

    def start():  # resume once the run folder exists; a kill before that starts it over
        if (run / "config.yaml").exists():
            return _train("--resume", str(run), *_args(run, tiny_model_dir)[2:])
        return _train("--overwrite", *_args(run, tiny_model_dir))

    p = start()
    while True:
        try:
            rc = p.wait(timeout=rng.uniform(1.0, duration / 2) if kills < 10 else None)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            p = start()
            continue
        assert rc == 0, p.stderr.read().decode()
        break
    assert kills == 10
    _same_run(ref, run, tiny_model_dir)


@pytest.mark.slow
def test_sigkill_in_the_checkpoint_save_window_then_resume(tmp_path, tiny_model_dir):
    """SIGKILL aimed at the checkpoint-save window 10 times: alternately while the
    temporary folder `.iter_<N>.tmp-*` is being written, and while `latest` is being
    replaced (its `.latest.tmp` written, not yet renamed). Every second save is let
    through so that the run moves on; the resumed run ends with the uninterrupted run's
    weights. Each kill is checked to have landed in its window."""
    iterations = 10  # kill k lands in the save of iteration k
    extra = [f"iterations={iterations}"]
    ref = tmp_path / "ref"
    p = _train(*_args(ref, tiny_model_dir), *extra)
    assert p.wait() == 0, p.stderr.read().decode()

    run, rng = tmp_path / "run", random.Random(0)
    root = run / "checkpoints"
    seen: set[str] = set()  # temporary checkpoint folders seen so far (killed saves leave theirs)
    landed = {"folder": 0, "latest": 0}
    save_events = 0

    def start():
        argv = (["--resume", str(run), *_args(run, tiny_model_dir)[2:]] if (run / "config.yaml").exists()
                else ["--overwrite", *_args(run, tiny_model_dir)])
        return _train(*argv, *extra, entry=("-c", SLOW_FSYNC))

    def new_tmp_folder():
        for d in root.glob(".iter_*.tmp-*") if root.is_dir() else ():
            if d.name not in seen:
                seen.add(d.name)
                return d
        return None

    def stamp(path):
        return path.stat().st_mtime_ns if path.exists() else None

    p = start()
    while True:
        tmp = new_tmp_folder() if sum(landed.values()) < 10 else None
        if tmp is None:
            if p.poll() is not None:
                assert p.returncode == 0, p.stderr.read().decode()
                break
            time.sleep(0.002)
            continue
        save_events += 1
        if save_events % 2 == 0:  # this save goes through
            continue
        name = tmp.name.split(".tmp-")[0][1:]  # iter_000003
        kind = "folder" if landed["folder"] <= landed["latest"] else "latest"
        if kind == "folder":
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the folder's write (>= 0.8 s of fsyncs)
        else:
            before = stamp(root / ".latest.tmp")
            while stamp(root / ".latest.tmp") == before and p.poll() is None:
                time.sleep(0.001)
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
        latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
        assert latest != name, (kind, name)  # the kill came before `latest` named the new checkpoint
        if kind == "folder":
            assert tmp.is_dir(), name  # ... and before the temporary folder was renamed into place
        else:
            assert (root / ".latest.tmp").exists() and (root / name / "state.json").is_file(), name
        landed[kind] += 1
        p = start()
    assert landed == {"folder": 5, "latest": 5}
    _same_run(ref, run, tiny_model_dir, iterations)
