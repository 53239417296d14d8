"""The bad-input table (docs/reliability.md): every case ends with one line on stderr that
names the key, file, line or value, exit code 2, and the run already in OUT untouched
(even with --overwrite: input is checked before anything in OUT is removed)."""

import hashlib
import json

import pytest

from k15rl.cli import main
from k15rl.trainer import checkpoint as ckpt_module


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory, tiny_model_dir):
    """A finished run that every bad command below points at (out=...)."""
    out = tmp_path_factory.mktemp("existing") / "run"
    code = main(["train", f"out={out}", f"model.path={tiny_model_dir}", "data.tasks=[sort]", "data.train_levels=[1]",
                 "data.test_levels=[1]", "data.train_per_level=8", "data.test_per_level=2", "iterations=1",
                 "rollout.k=2", "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "threads=1"])
    assert code == 0
    return out


def _files(tmp_path):
    """Bad input files, written fresh for each case."""
    d = tmp_path / "inputs"
    d.mkdir(exist_ok=True)
    (d / "bad.yaml").write_text("rollout:\n  k: 8\n  temperature: [1,\n")
    (d / "list.yaml").write_text("- rollout\n- k\n")
    (d / "empty.jsonl").write_text("")
    (d / "badrow.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"\n')
    (d / "noanswer.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "3+3?"}\n')
    (d / "data.xyz").write_text("x")
    return d


# (case, arguments after `k15rl`, text the error line must contain); {run}, {model}, {in} are filled in
CASES = [
    ("malformed YAML", ["train", "--config", "{in}/bad.yaml", "out={run}"], "bad.yaml:4"),
    ("YAML that is not a mapping", ["train", "--config", "{in}/list.yaml", "out={run}"], "list.yaml"),
    ("missing config file", ["train", "--config", "{in}/nope.yaml", "out={run}"], "nope.yaml"),
    ("unknown key", ["train", "out={run}", "rollout.tempreture=1"], "rollout.tempreture"),
    ("wrong type", ["train", "out={run}", "rollout.k=many"], "rollout.k"),
    ("override without =", ["train", "out={run}", "iterations"], "iterations"),
    ("tau <= 0", ["train", "out={run}", "algorithm.tau=0"], "algorithm.tau"),
    ("temperature < 0", ["train", "out={run}", "rollout.temperature=-1"], "rollout.temperature"),
    ("k < 2 for the k1.5 loss", ["train", "out={run}", "rollout.k=1"], "rollout.k"),
    ("top_p out of (0, 1]", ["train", "out={run}", "rollout.top_p=1.5"], "rollout.top_p"),
    ("iterations < 1", ["train", "out={run}", "iterations=0"], "iterations"),
    ("mini-batches > groups", ["train", "out={run}", "rollout.prompts_per_iteration=2", "algorithm.minibatches=4"],
     "algorithm.minibatches"),
    ("unknown loss", ["train", "out={run}", "algorithm.loss=ppo"], "algorithm.loss"),
    ("unknown sampler", ["train", "out={run}", "sampler.name=random"], "sampler.name"),
    ("unknown task", ["train", "out={run}", "data.tasks=[chess]"], "chess"),
    ("negative segment budget", ["train", "out={run}", "rollout.segment_tokens=-1"], "rollout.segment_tokens"),
    ("missing model", ["train", "--overwrite", "out={run}", "model.path=/no/such/model"], "/no/such/model"),
    ("model folder without weights", ["train", "--overwrite", "out={run}", "model.path={in}"], "inputs"),
    ("unreadable dataset (missing)", ["train", "--overwrite", "out={run}", "model.path={model}", "data.train_files=[{in}/no.jsonl]"],
     "no.jsonl"),
    ("unknown data format", ["train", "--overwrite", "out={run}", "model.path={model}", "data.train_files=[{in}/data.xyz]"],
     "data.xyz"),
    ("empty dataset", ["train", "--overwrite", "out={run}", "model.path={model}", "data.train_files=[{in}/empty.jsonl]"],
     "empty.jsonl"),
    ("malformed JSONL row", ["train", "--overwrite", "out={run}", "model.path={model}", "data.train_files=[{in}/badrow.jsonl]"],
     "badrow.jsonl, line 2"),
    ("row without an answer", ["train", "--overwrite", "out={run}", "model.path={model}", "data.train_files=[{in}/noanswer.jsonl]"],
     "noanswer.jsonl, line 2, field 'answer'"),
    ("OUT holds a run (no --resume/--overwrite)", ["train", "out={run}", "model.path={model}", "data.tasks=[sort]"],
     "already holds a run"),
    ("--resume where there is no run", ["train", "--resume", "{in}"], "no run to resume"),
    ("--resume with --config", ["train", "--resume", "{run}", "--config", "demo"], "--resume"),
    ("bad eval model", ["eval", "--model", "/no/such/model"], "/no/such/model"),
]


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_out_untouched(tmp_path, capsys, existing_run, tiny_model_dir, case, argv, needle):
    inputs = _files(tmp_path)
    fill = {"run": str(existing_run), "model": str(tiny_model_dir), "in": str(inputs)}
    before = _snapshot(existing_run)
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("k15rl: error:"), err
    assert needle.format(**fill) in err[0], err[0]
    assert _snapshot(existing_run) == before


def test_disk_full_while_writing_a_checkpoint(tmp_path, capsys, tiny_model_dir, monkeypatch):
    """The write fails half-way: one line, exit 2, no partial checkpoint, the previous one still `latest`."""
    real, calls = ckpt_module._fsync_tree, []

    def full_disk(path):
        calls.append(path)
        if len(calls) == 3:  # the third write: checkpoint of iteration 3
            raise OSError(28, "No space left on device")
        return real(path)

    monkeypatch.setattr(ckpt_module, "_fsync_tree", full_disk)
    out = tmp_path / "run"
    code = main(["train", f"out={out}", f"model.path={tiny_model_dir}", "data.tasks=[sort]", "data.train_levels=[1]",
                 "data.test_levels=[1]", "data.train_per_level=8", "data.test_per_level=2", "iterations=4",
                 "rollout.k=2", "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "threads=1",
                 "checkpoint_every=1"])
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("k15rl:")]  # not progress bars
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0] and "iter_000003" in err[0], err
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["iter_000001", "iter_000002", "latest"]  # no torn folder
    assert (ck / "latest").read_text().strip() == "iter_000002"
    state = json.loads((ck / "iter_000002" / "state.json").read_text())
    assert state["iteration"] == 2
