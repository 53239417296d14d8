"""Kill the trainer with SIGKILL at random moments, resume each time, and check that the
run finishes with every metrics line exactly once and the weights of an uninterrupted
run (slow: about 3 minutes).

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


def _train(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "k15rl.cli", "train", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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

    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], load_file(tiny_model_dir / "model.safetensors")[k]) for k in a)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("reward/mean") for r in rows] == [r.get("reward/mean") for r in ref_rows]
