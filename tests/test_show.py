"""`k15rl show RUN` and `k15rl --version`: read a run folder's files only, fast; bad
input is one line naming the path (and line), exit code 2."""

import json
import subprocess
import sys

import pytest
import yaml

from k15rl.cli import main
from k15rl.config import load_config, to_dict
from k15rl.trainer.card import package_version


def fake_run(tmp_path, metrics_lines=None):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config("demo", [f"out={out}"])), sort_keys=False))
    rows = [{"iteration": i, "reward/accuracy": 0.1 * i, "rollout/len_mean": 10.0 + i, "loss/policy": -0.5,
             "loss/l2": 0.01, "time/iteration": 2.5, "rollout/frac_cut": 0.0} for i in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(metrics_lines or [json.dumps(r) + "\n" for r in rows]))
    (out / "eval.jsonl").write_text(json.dumps({"iteration": 0, "temperature": 1.0, "accuracy": 0.25,
                                                "accuracy_ci95": 0.05, "mean_tokens": 40.0, "n": 100}) + "\n")
    (out / "checkpoints" / "iter_000003").mkdir(parents=True)
    (out / "checkpoints" / "iter_000003" / "state.json").write_text("{}")
    return out


def test_show_prints_config_latest_metrics_evals_and_checkpoints(tmp_path, capsys):
    out = fake_run(tmp_path)
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("algorithm.loss", "k15", "rollout.k", "metrics (metrics.jsonl, 3 rows)", "time/iteration",
                   "| 0 | 1 | 0.250 ± 0.050 | 40.0 | 100 |", "checkpoints: iter_000003", "final model: none"):
        assert needle in text, needle
    latest = {line.split()[0]: line.split()[1] for line in text.splitlines()
              if line.startswith("  ") and len(line.split()) == 2}
    assert latest["iteration"] == "3" and latest["reward/accuracy"] == "0.3" and latest["rollout/len_mean"] == "13"
    assert "rollout/frac_cut" not in text  # only the main keys


@pytest.mark.parametrize("case, needle", [("missing", "no such folder"), ("empty", "not a run folder"),
                                          ("corrupt", "metrics.jsonl:2: not valid JSON")])
def test_show_bad_input_is_one_line_exit_2(tmp_path, capsys, case, needle):
    if case == "missing":
        path = tmp_path / "nope"
    elif case == "empty":
        path = tmp_path
    else:
        path = fake_run(tmp_path, ['{"iteration": 1}\n', '{"iteration": 2, \n'])
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and str(path) in err[0]


def test_show_loads_no_torch(tmp_path):
    out = fake_run(tmp_path)
    code = ("import sys; from k15rl.cli import main; rc = main(['show', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"k15rl {package_version()}"
    from importlib.metadata import version

    assert package_version() == version("k15rl")


def test_show_on_a_real_tiny_run(tmp_path, tiny_model_dir, capsys):
    from k15rl.trainer.loop import train

    out = tmp_path / "run"
    train(load_config(None, [f"out={out}", f"model.path={tiny_model_dir}", "data.tasks=[sort]", "iterations=1",
                             "data.train_per_level=4", "data.test_per_level=1", "rollout.k=2",
                             "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "threads=1"]),
          log=lambda s: None)
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "metrics (metrics.jsonl, 1 rows)" in text and "reward/accuracy" in text and "loss/policy" in text
    assert "checkpoints: iter_000001" in text and f"final model: {out / 'final'}" in text
    assert "evaluation (eval.jsonl, " in text and "| 1 | 1 |" in text
