"""Command-line errors: one line naming the key or path, exit code 2, OUT untouched."""

import subprocess
import sys

import pytest

from k15rl.cli import main


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rollout.tempreture=1"], "rollout.tempreture"),
        (["rollout.k=abc"], "rollout.k"),
        (["rollout.k=1"], "rollout.k"),
        (["rollout.prompts_per_iteration=0"], "rollout.prompts_per_iteration"),
        (["rollout.prompts_per_iteration=-4"], "rollout.prompts_per_iteration"),
        (["algorithm.tau=0"], "algorithm.tau"),
        (["algorithm.tau=-1"], "algorithm.tau"),
        (["rollout.temperature=-0.5"], "rollout.temperature"),
        (["algorithm.loss=ppo2"], "algorithm.loss"),
        (["model.path=/no/such/model"], "/no/such/model"),
        (["data.tasks=[nope]"], "data.tasks"),
        (["model.dtype=float16"], "model.dtype"),
        (["iterations"], "iterations"),
        (["algorithm.normalization=tokens"], "algorithm.normalization"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, needle):
    code, err = run(["train", f"out={tmp_path / 'run'}", *overrides], capsys)
    assert code == 2
    assert len(err) == 1 and needle in err[0] and err[0].startswith("k15rl: error:")
    assert not (tmp_path / "run").exists()


def test_bad_yaml_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rollout:\n  k: 8\n  temperature: [1,\n")
    code, err = run(["train", "--config", str(cfg)], capsys)
    assert code == 2 and str(cfg) in err[0] and len(err) == 1


def test_missing_config_file(capsys):
    code, err = run(["train", "--config", "nope.yaml"], capsys)
    assert code == 2 and "nope.yaml" in err[0]


def test_tokenizer_without_chat_template(tmp_path, capsys, tiny_model_dir):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    cfg = model / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    code, err = run(["train", f"out={tmp_path / 'run'}", f"model.path={model}", "data.tasks=[sort]"], capsys)
    assert code == 2 and "chat template" in err[0] and "model.chat_template" in err[0]


def test_existing_run_is_not_destroyed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    code, err = run(["train", f"out={out}", "model.path=/no/such/model"], capsys)
    assert code == 2
    assert (out / "metrics.jsonl").read_text() == '{"iteration": 1}\n'


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "k15rl.cli", "train", "algorithm.tau=0"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "algorithm.tau" in r.stderr


def test_overrides_may_follow_flags(tmp_path, capsys):
    code, err = run(["train", f"out={tmp_path / 'run'}", "--overwrite", "algorithm.tau=0"], capsys)
    assert code == 2 and "algorithm.tau" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["train", "--overwrite", "--nope"])
    assert e.value.code == 2


def test_eval_writes_every_response_it_scored(tmp_path, capsys, tiny_model_dir):
    """k15rl eval --responses: one row per sample, whose rewards give the printed accuracy;
    both files in folders that do not exist yet."""
    import json

    out, responses = tmp_path / "new" / "e.json", tmp_path / "r" / "responses.jsonl"
    code = main(["eval", "--model", str(tiny_model_dir), "--output", str(out), "--responses", str(responses),
                 "data.test_per_level=1", "data.test_levels=[1,2]", "eval.samples_per_prompt=3",
                 "rollout.max_new_tokens=8", "threads=1"])
    assert code == 0
    result = json.loads(out.read_text())
    rows = [json.loads(x) for x in responses.read_text().splitlines()]
    assert len(rows) == result["n"] == 2 * 3 and [r["sample"] for r in rows] == [0, 1, 2, 0, 1, 2]
    assert sum(r["correct"] for r in rows) / 6 == pytest.approx(result["accuracy"])
    assert sorted({r["level"] for r in rows}) == [1, 2] and all(0 < r["tokens"] <= 8 for r in rows)
    assert all(r["task"] == "sort" and r["question"].startswith("Sort") for r in rows)
    assert "6 responses written to" in capsys.readouterr().out


def test_eval_responses_path_that_cannot_be_written_is_refused_first(tmp_path, capsys, tiny_model_dir):
    code, err = run(["eval", "--model", str(tiny_model_dir), "--output", str(tmp_path / "e.json"),
                     "--responses", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and f"--responses {tmp_path}: is a folder" in err[0]
    assert not (tmp_path / "e.json").exists()


def test_flag_defaults_are_the_settings_defaults():
    """The parser keeps torch out of `k15rl --help`, so the fine-tuning and data commands'
    flag defaults are written beside their settings' dataclasses: they must be equal."""
    import inspect

    from k15rl.cli import build_parser
    from k15rl.data.curate import easy_to_hack
    from k15rl.data.difficulty import SampleSettings
    from k15rl.long2short.dpo import DPOConfig
    from k15rl.rewards.codetests import CodeTestsConfig
    from k15rl.trainer.sft import SFTConfig

    parse = build_parser().parse_args
    sft = parse(["sft", "--model", "m", "--data", "d", "--out", "o"])
    assert (sft.epochs, sft.lr, sft.batch_size, sft.max_length) == (
        SFTConfig.epochs, SFTConfig.lr, SFTConfig.batch_size, SFTConfig.max_length)
    dpo = parse(["dpo", "--model", "m", "--data", "d", "--out", "o"])
    assert (dpo.beta, dpo.lr, dpo.epochs, dpo.batch_size, dpo.sft_weight, dpo.seed, dpo.max_length) == (
        DPOConfig.beta, DPOConfig.lr, DPOConfig.epochs, DPOConfig.batch_size, DPOConfig.sft_weight, DPOConfig.seed,
        DPOConfig.max_length)
    code = parse(["codetests", "--problems", "p", "--out", "o"])
    assert (code.cases, code.case_agreement, code.problem_pass, code.workers, code.seed) == (
        CodeTestsConfig.cases, CodeTestsConfig.case_agreement, CodeTestsConfig.problem_pass,
        CodeTestsConfig.workers, CodeTestsConfig.seed)
    diff = parse(["difficulty", "--model", "m", "--data", "d", "--out", "o"])
    assert (diff.samples, diff.temperature, diff.batch) == (
        SampleSettings.samples, SampleSettings.temperature, SampleSettings.prompts_per_batch)
    cur = parse(["curate", "--data", "d", "--out", "o"])
    hack = inspect.signature(easy_to_hack).parameters
    assert (cur.attempts, cur.max_new_tokens, cur.temperature, cur.batch) == (
        hack["attempts"].default, hack["max_new_tokens"].default, hack["temperature"].default,
        hack["prompts_per_batch"].default)
