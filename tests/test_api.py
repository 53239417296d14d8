"""The Python API: k15rl.train with a callable reward and in-memory data runs the same loop."""

import json

import pytest

import k15rl
from k15rl.errors import UserError


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"Say the number {i}.", "answer": str(i % 10)} for i in range(n)]


def _args(tmp_path, model) -> list[str]:
    return [f"out={tmp_path / 'run'}", f"model.path={model}", "iterations=2", "rollout.k=2",
            "rollout.prompts_per_iteration=3", "rollout.max_new_tokens=3", "threads=1", "eval.every=0"]


def test_a_callable_reward_scores_every_sample(tmp_path, tiny_model_dir):
    """The loop uses the Python reward for training and evaluation: 0.25 for every
    sample gives reward/mean 0.25 each iteration; it sees each response and its prompt."""
    seen = []

    def reward(text, prompt):
        seen.append((text, prompt.answer))
        return 0.25

    summary = k15rl.train(None, *_args(tmp_path, tiny_model_dir), reward_fn=reward, train_dataset=_rows(30),
                          eval_dataset=_rows(4), log=lambda s: None)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/mean"] for m in metrics] == [0.25, 0.25]
    assert [m["reward/accuracy"] for m in metrics] == [0.0, 0.0]  # correct means a reward of 1
    # 2 iterations x 3 prompts x 2 samples, plus 4 test prompts before and after (sampled and greedy each)
    assert len(seen) == 2 * 3 * 2 + 4 * 4
    assert {a for _, a in seen} <= {str(i) for i in range(10)}
    assert summary["iterations"] == 2 and summary["eval_prompts"] == 4


def test_a_batched_reward_and_a_datasets_dataset(tmp_path, tiny_model_dir):
    datasets = pytest.importorskip("datasets")
    calls = []

    def reward(texts, prompts):
        calls.append(len(texts))
        return [1.0] * len(texts)

    reward.batched = True
    k15rl.train(None, *_args(tmp_path, tiny_model_dir), "data.test_fraction=0.2", reward_fn=reward,
                train_dataset=datasets.Dataset.from_list(_rows(40)), log=lambda s: None)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/accuracy"] for m in metrics] == [1.0, 1.0]
    assert 6 in calls  # one call per iteration for its 6 samples


def test_bad_in_memory_rows_get_the_errors_of_a_file(tmp_path, tiny_model_dir):
    """The same one-line error as a JSONL file with that row, naming the dataset and row."""
    from k15rl.config import load_config
    from k15rl.data import build_prompts

    rows = [{"prompt": "ok", "answer": "1"}, {"answer": "2"}]
    with pytest.raises(UserError) as mem:
        k15rl.train(None, *_args(tmp_path, tiny_model_dir), train_dataset=rows, log=lambda s: None)
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError) as file:
        build_prompts(load_config(None, [f"data.train_files=[{f}]"]), log=lambda s: None)
    assert str(mem.value).startswith("train_dataset, row 1, field ")
    assert str(mem.value).split(": ", 1)[1] == str(file.value).split(": ", 1)[1]
    assert not (tmp_path / "run").exists()  # nothing written
    with pytest.raises(UserError, match="row 0: expected a mapping of fields, got str"):
        k15rl.train(None, *_args(tmp_path, tiny_model_dir), train_dataset=["just text"], log=lambda s: None)
    with pytest.raises(UserError, match="reward_fn must be callable"):
        k15rl.train(None, *_args(tmp_path, tiny_model_dir), reward_fn="math", train_dataset=rows[:1])


def test_importing_k15rl_stays_light():
    import subprocess
    import sys

    code = "import sys, k15rl; print('torch' in sys.modules, callable(k15rl.train))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_the_readme_example_runs(tmp_path, tiny_model_dir, monkeypatch):
    """The README's Python API example, on the tiny model, in a temporary folder."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    assert '"model.path=builtin"' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"model.path=builtin"', f'"model.path={tiny_model_dir}", "threads=1"'),
                 "README.md", "exec"), {})
    summary = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["eval_prompts"] == 10


def test_resume_through_the_api(tmp_path, tiny_model_dir):
    """A run made from Python continues from its checkpoint with the same data and reward passed again."""
    def reward(text, prompt):
        return 0.5

    args = [a for a in _args(tmp_path, tiny_model_dir) if not a.startswith("iterations=")]
    k15rl.train(None, *args, "iterations=2", "checkpoint_every=1", reward_fn=reward, train_dataset=_rows(30),
                eval_dataset=_rows(4), log=lambda s: None)
    summary = k15rl.train(None, *args, "iterations=3", reward_fn=reward, train_dataset=_rows(30),
                          eval_dataset=_rows(4), resume=True, log=lambda s: None)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert summary["resumed_from"].endswith("iter_000002") and summary["iterations"] == 3
