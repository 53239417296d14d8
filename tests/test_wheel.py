"""The built wheel works outside the checkout: `pip wheel .`, installed into a fresh venv,
runs the command line, trains a short run from another folder and ships every preset.

The fresh venv gets torch and the other dependencies from this project's venv through a
.pth file (a fresh download of torch is too slow for a test); k15rl itself comes from the
wheel alone. `make test-wheel` runs it."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd, cwd, env=None, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    # built from a copy, so the checkout gets no build/ or egg-info
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "benchmarks"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", src, "-w", tmp_path / "dist",
       cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("k15rl-*.whl")
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    # the wheel first, into an environment that sees nothing else (pip could otherwise
    # find the checkout's editable k15rl through the .pth below)
    sh(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = sh(py, "-c", "import k15rl; print(k15rl.__file__)", cwd=tmp_path, env=env).strip()
    assert Path(where).is_relative_to(site), where  # not the checkout
    presets = sh(py, "-c", "from k15rl.config import list_presets; print(' '.join(list_presets()))",
                 cwd=tmp_path, env=env).split()
    assert presets == sorted(p.stem for p in (ROOT / "k15rl" / "configs").glob("*.yaml")) and "demo" in presets
    k15rl = venv / "bin" / "k15rl"
    assert "train" in sh(k15rl, "--help", cwd=tmp_path, env=env)
    assert "--out" in sh(k15rl, "demo", "--help", cwd=tmp_path, env=env)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sh(k15rl, "--version", cwd=tmp_path, env=env).strip() == f"k15rl {version}"  # the wheel's metadata
    sh(k15rl, "train", "--config", "demo", "iterations=1", "data.test_per_level=2", "data.train_per_level=20",
       "rollout.prompts_per_iteration=2", "rollout.k=2", "rollout.max_new_tokens=8", "eval.every=0",
       "algorithm.minibatches=1", "threads=1",
       f"out={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert "metrics (metrics.jsonl, 1 rows)" in sh(k15rl, "show", tmp_path / "run", cwd=tmp_path, env=env)
