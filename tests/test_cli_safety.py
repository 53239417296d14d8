"""Command-line cases that need more than one call: damaged checkpoints and logs of a
real run, resume limits, Ctrl-C, float flags, warm-up rows with images
(docs/reliability.md)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import snapshot, tiny_run_args

from k15rl.cli import main
from k15rl.trainer import loop


@pytest.fixture(scope="module")
def run_two(tmp_path_factory, tiny_model_dir):
    """A finished run of 2 iterations with a checkpoint after each."""
    out = tmp_path_factory.mktemp("two") / "run"
    assert main(tiny_run_args(out, tiny_model_dir, 2, "checkpoint_every=1")) == 0
    return out


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _one_line(capsys):
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.strip() and "it/s]" not in x and "%|" not in x]
    assert len(err) == 1 and err[0].startswith("k15rl: "), err
    return err[0]


@pytest.mark.parametrize("damage, needle", [
    ('{"iteration": 2,', "state.json: not valid JSON"),
    ("{}", "state.json: no 'iteration'"),
    ('{"iteration": 2}', "state.json: no 'next_group'"),
])
def test_resume_from_a_damaged_state_json_names_it_and_changes_nothing(run_two, tmp_path, capsys, damage, needle):
    """A checkpoint's state.json that does not parse or lacks a key: one line naming the
    file, exit 2, the run's files as they were (before, `{}` restarted the run at
    iteration 0 and logged iteration 1 twice)."""
    run = _copy(run_two, tmp_path)
    (run / "checkpoints" / "iter_000002" / "state.json").write_text(damage)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "iterations=3"]) == 2
    assert needle in _one_line(capsys)
    assert snapshot(run) == before


def test_resume_with_fewer_iterations_than_done_is_refused(run_two, tmp_path, capsys):
    run = _copy(run_two, tmp_path)
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "iterations=1"]) == 2
    assert "iterations=1: the run in" in _one_line(capsys) and snapshot(run) == before


def test_a_damaged_log_line_names_the_file_and_line_and_a_torn_last_line_is_dropped(run_two, tmp_path, capsys):
    run = _copy(run_two, tmp_path)
    lines = (run / "eval.jsonl").read_text().splitlines(keepends=True)
    (run / "eval.jsonl").write_text("garbage\n" + "".join(lines[1:]))
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "iterations=3"]) == 2
    assert f"{run / 'eval.jsonl'}:1: not valid JSON" in _one_line(capsys) and snapshot(run) == before
    # what a kill leaves: a last line cut short. `show` reads the rest and says so
    run = _copy(run_two, tmp_path / "b")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "rew')
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "metrics (metrics.jsonl, 2 rows)" in out and "metrics.jsonl: its last line was cut short" in out


def test_ctrl_c_names_the_iteration_and_how_to_resume(run_two, tmp_path, capsys, monkeypatch, tiny_model_dir):
    calls = []
    real = loop.start_rollout

    def interrupted(run, it):
        calls.append(it)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run, it)

    monkeypatch.setattr(loop, "start_rollout", interrupted)
    out = tmp_path / "run"
    assert main(tiny_run_args(out, tiny_model_dir, 3, "checkpoint_every=1")) == 130
    line = _one_line(capsys)
    assert "interrupted at iteration 2 (rollout)" in line and f"resume with k15rl train --resume {out}" in line
    assert "from iter_000001" in line


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--beta", "-inf")])
def test_float_flags_must_be_finite(tmp_path, capsys, flag, value):
    command = "sft" if flag == "--lr" else "dpo"
    with pytest.raises(SystemExit) as e:
        main([command, "--model", "builtin", "--data", "x.jsonl", "--out", str(tmp_path / "m"), f"{flag}={value}"])
    assert e.value.code == 2
    assert f"argument {flag}: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_warmup_data_of_a_visual_task_carries_its_images(tmp_path):
    """The rows hold their images (data URIs), so `k15rl sft` reads them back."""
    from k15rl.trainer.sft import load_sft_jsonl

    out = tmp_path / "w.jsonl"
    assert main(["warmup-data", "--tasks", "vis_count", "--levels", "1", "--n", "2", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(len(r["images"]) == 1 and r["images"][0].startswith("data:image/png;base64,") for r in rows)
    examples = load_sft_jsonl(out)
    assert len(examples) == 2


def test_a_local_run_says_which_ray_settings_it_ignores():
    from k15rl.config import load_config

    assert load_config(None, []).ignored_ray_settings() == []
    cfg = load_config(None, ["distributed.rollout_workers=4", "distributed.address=auto"])
    assert cfg.ignored_ray_settings() == ["distributed.address=auto", "distributed.rollout_workers=4"]
    assert load_config(None, ["distributed.backend=ray", "distributed.rollout_workers=4"]).ignored_ray_settings() == []
