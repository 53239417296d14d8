"""The bad-input table (docs/reliability.md): every case ends with one line on stderr that
names the key, file, line or value, exit code 2, and the run already in OUT untouched
(even with --overwrite: input is checked before anything in OUT is removed). Nothing is
written either: no output at a fresh path ({new}), no new file among the inputs."""

import json
import re
import shutil
import subprocess

import pytest
from conftest import snapshot, tiny_run_args

from k15rl.cli import main
from k15rl.trainer import checkpoint as ckpt_module


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory, tiny_model_dir):
    """A finished run that every bad command below points at (out=...)."""
    out = tmp_path_factory.mktemp("existing") / "run"
    assert main(tiny_run_args(out, tiny_model_dir)) == 0
    return out


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_model_dir):
    """Copies of the tiny model, each broken in one way (read, never written, by the cases)."""
    root = tmp_path_factory.mktemp("bad_models")
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    breakage = {
        "empty_weights": ("model.safetensors", b""),
        "truncated_weights": ("model.safetensors", weights[: len(weights) // 2]),
        "garbage_config": ("config.json", b'{"model_type": "llama", "hidden_size": 32,\n  oops'),
        "list_config": ("config.json", b"[1, 2, 3]"),
        "no_model_type": ("config.json", json.dumps({"architectures": ["LlamaForCausalLM"]}).encode()),
        "garbage_tokenizer": ("tokenizer.json", b"\x00\x01 not json"),
        "no_tokenizer": ("tokenizer.json", None),
    }
    for name, (file, content) in breakage.items():
        shutil.copytree(tiny_model_dir, root / name)
        if content is None:
            (root / name / file).unlink()
        else:
            (root / name / file).write_bytes(content)
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_dir, root / "nonfinite")  # what a diverged run saves
    weights = load_file(root / "nonfinite" / "model.safetensors")
    name = sorted(weights)[-1]
    weights[name] = torch.full_like(weights[name], float("inf"))
    save_file(weights, root / "nonfinite" / "model.safetensors", metadata={"format": "pt"})
    return root


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory):
    """A folder on a read-only tmpfs: unwritable even for root, where chmod stops nothing.
    Needs mount rights (root with CAP_SYS_ADMIN); skipped otherwise."""
    d = tmp_path_factory.mktemp("readonly")
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a read-only file system")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs (not root?): {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


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
    (d / "good.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"}\n')
    # JSON escapes: a lone surrogate (UTF-8 cannot encode it) and a bell character
    (d / "surrogate.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2? \\ud800", "answer": "4"}\n')
    (d / "control.jsonl").write_text('{"problem": "1+1?", "answer": "2\\u0007"}\n')
    (d / "control.csv").write_text("problem,answer\n1+1?,2\n2+2?\x1b[0m,4\n")
    (d / "sft.jsonl").write_text('{"prompt": "1+1?", "response": "2"}\n')
    (d / "sft_empty.jsonl").write_text('{"prompt": "1+1?", "response": "2"}\n{"prompt": "2+2?", "response": " "}\n')
    (d / "pairs_same.jsonl").write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "2"}\n')
    (d / "sft_surrogate.jsonl").write_text('{"prompt": "1+1?", "response": "2\\udfff"}\n')
    (d / "pairs.jsonl").write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "two, I think"}\n')
    (d / "pairs_control.jsonl").write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n'
                                           '{"prompt": "2+2?", "chosen": "4\\u0000", "rejected": "5"}\n')
    (d / "bad.gguf").write_bytes(b"GGUF" + bytes(12))  # magic, then nothing
    (d / "afile").write_text("a file where a folder is wanted\n")
    (d / "dup.yaml").write_text("iterations: 1\nrollout:\n  k: 4\niterations: 5\n")
    (d / "latin1.yaml").write_bytes(b"iterations: 2\n# caf\xe9\n")
    (d / "conf.d").mkdir(exist_ok=True)
    (d / "own").mkdir(exist_ok=True)
    (d / "own" / "config.yaml").write_text("# the user's own settings\niterations: 1\n")
    (d / "report").mkdir(exist_ok=True)
    (d / "report" / "report.md").write_text("an earlier long2short report\n")
    (d / "fake.jsonl.gz").write_bytes(b"not gzip")
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(d / "red.png")
    (d / "img.jsonl").write_text(json.dumps({"prompt": "<image>What colour?", "answer": "red",
                                             "images": ["red.png"]}) + "\n")
    (d / "long.jsonl").write_text(json.dumps({"problem": "a b c d e f g " * 400, "answer": "1"}) + "\n")
    problem = d / "problems" / "p1"
    (problem / "solutions").mkdir(parents=True, exist_ok=True)
    (problem / "statement.md").write_text("Print the sum.\x07\n")
    (problem / "gen.py").write_text("print(1, 2)\n")
    for name in ("a.py", "b.py"):
        (problem / "solutions" / name).write_text("print(sum(map(int, input().split())))\n")
    return d


# (case, arguments after `k15rl`, text the error line must contain); filled in: {run} (a finished run),
# {model} (a good model folder), {bad} (broken model folders, see bad_models), {in} (input files),
# {new} (a path that must not exist afterwards), {ro} (a folder on a read-only file system)
PROGRESS_BAR = re.compile(r"\d+%\|.*\| \d+/\d+ \[")  # a tqdm line: " 50%|#####     | 1/2 [00:01<..."

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
    ("no attention group", ["train", "out={run}", "rollout.attention_groups=0"], "rollout.attention_groups"),
    ("kept optimizer on Ray", ["train", "out={run}", "algorithm.optimizer_reset=false", "distributed.backend=ray"],
     "algorithm.optimizer_reset"),
    ("kept KV without partial rollouts", ["train", "out={run}", "rollout.keep_kv=true",
                                          "algorithm.recompute_old_logprobs=true"], "rollout.keep_kv"),
    ("kept KV with the engine's log-probs", ["train", "out={run}", "rollout.keep_kv=true",
                                             "rollout.segment_tokens=4"], "recompute_old_logprobs"),
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
    # broken model folders: the file at fault, before anything is written
    ("0-byte model.safetensors", ["train", "--overwrite", "out={run}", "model.path={bad}/empty_weights"],
     "{bad}/empty_weights/model.safetensors: not a complete safetensors file (0 bytes"),
    ("truncated model.safetensors", ["train", "--overwrite", "out={run}", "model.path={bad}/truncated_weights"],
     "{bad}/truncated_weights/model.safetensors: not a complete safetensors file"),
    ("config.json not JSON", ["train", "--overwrite", "out={run}", "model.path={bad}/garbage_config"],
     "{bad}/garbage_config/config.json: not valid JSON"),
    ("eval: config.json not an object", ["eval", "--model", "{bad}/list_config", "--output", "{new}"],
     "{bad}/list_config/config.json: expected a JSON object"),
    ("eval: no tokenizer files", ["eval", "--model", "{bad}/no_tokenizer", "--output", "{new}"],
     "{bad}/no_tokenizer has no tokenizer files"),
    ("sft: config.json without model_type", ["sft", "--model", "{bad}/no_model_type", "--data", "{in}/sft.jsonl",
                                             "--out", "{new}"], "{bad}/no_model_type/config.json: no 'model_type'"),
    ("dpo: truncated weights", ["dpo", "--model", "{bad}/truncated_weights", "--data", "{in}/pairs.jsonl",
                                "--out", "{new}"], "{bad}/truncated_weights/model.safetensors"),
    ("long2short merge: 0-byte weights", ["long2short", "merge", "--long", "{model}", "--short", "{bad}/empty_weights",
                                          "--out", "{new}"], "{bad}/empty_weights/model.safetensors"),
    ("long2short shortest-rs: config.json not JSON", ["long2short", "shortest-rs", "--model", "{bad}/garbage_config",
                                                      "--data", "{in}/good.jsonl", "--out", "{new}"],
     "{bad}/garbage_config/config.json"),
    ("long2short dpo-pairs: no tokenizer files", ["long2short", "dpo-pairs", "--model", "{bad}/no_tokenizer",
                                                  "--data", "{in}/good.jsonl", "--out", "{new}"],
     "{bad}/no_tokenizer has no tokenizer files"),
    ("long2short report: one truncated model", ["long2short", "report", "--models", "{model}",
                                                "{bad}/truncated_weights", "--out", "{new}"],
     "{bad}/truncated_weights/model.safetensors"),
    ("curate: tokenizer.json not JSON", ["curate", "--data", "{in}/good.jsonl", "--model", "{bad}/garbage_tokenizer",
                                         "--out", "{new}"], "{bad}/garbage_tokenizer/tokenizer.json: not valid JSON"),
    ("difficulty: config.json not an object", ["difficulty", "--model", "{bad}/list_config", "--data",
                                               "{in}/good.jsonl", "--out", "{new}"], "{bad}/list_config/config.json"),
    ("convert-gguf: not a GGUF model", ["convert-gguf", "--gguf", "{in}/bad.gguf", "--out", "{new}"], "bad.gguf"),
    # text that is not text: lone surrogates, control characters (file, line, field)
    ("lone surrogate in a prompt", ["train", "--overwrite", "out={run}", "model.path={model}",
                                    "data.train_files=[{in}/surrogate.jsonl]"],
     "surrogate.jsonl, line 2, field 'problem': lone surrogate U+D800"),
    ("control character in an answer", ["train", "--overwrite", "out={run}", "model.path={model}",
                                        "data.train_files=[{in}/control.jsonl]"],
     "control.jsonl, line 1, field 'answer': control character U+0007"),
    ("demo: lone surrogate in a prompt", ["demo", "--out", "{new}", "data.train_files=[{in}/surrogate.jsonl]"],
     "surrogate.jsonl, line 2, field 'problem'"),
    ("curate: lone surrogate", ["curate", "--data", "{in}/surrogate.jsonl", "--out", "{new}"],
     "surrogate.jsonl, line 2, field 'problem'"),
    ("difficulty: escape character in a CSV cell", ["difficulty", "--model", "{model}", "--data", "{in}/control.csv",
                                                    "--out", "{new}"], "control.csv, line 3, field 'problem'"),
    ("sft: lone surrogate in a response", ["sft", "--model", "{model}", "--data", "{in}/sft_surrogate.jsonl",
                                           "--out", "{new}"], "sft_surrogate.jsonl:1: field 'response': lone surrogate"),
    ("dpo: NUL in a chosen response", ["dpo", "--model", "{model}", "--data", "{in}/pairs_control.jsonl",
                                       "--out", "{new}"], "pairs_control.jsonl:2: field 'chosen': control character"),
    ("long2short shortest-rs: lone surrogate", ["long2short", "shortest-rs", "--model", "{model}", "--data",
                                                "{in}/surrogate.jsonl", "--out", "{new}"],
     "surrogate.jsonl, line 2, field 'problem'"),
    ("long2short report: control character", ["long2short", "report", "--models", "{model}", "--data",
                                              "{in}/control.jsonl", "--out", "{new}"], "control.jsonl, line 1"),
    ("codetests: bell character in a statement", ["codetests", "--problems", "{in}/problems", "--out", "{new}"],
     "p1/statement.md: control character U+0007"),
    # output paths that cannot be written: refused before anything is read or written
    ("OUT under /proc", ["train", "out=/proc/k15rl-bad-input/run"], "out /proc/k15rl-bad-input/run: lies under /proc"),
    ("OUT is a file", ["train", "--overwrite", "out={in}/afile"], "out {in}/afile: is a file, not a folder"),
    ("OUT below a file", ["train", "out={in}/afile/run"], "{in}/afile is a file"),
    ("OUT on a read-only file system", ["train", "out={ro}/run"], "{ro} is not writable"),
    ("demo --out under /proc", ["demo", "--out", "/proc/self/k15rl-demo"], "lies under /proc"),
    ("demo --out below a file", ["demo", "--out", "{in}/afile/demo"], "{in}/afile is a file"),
    ("eval --output is a folder", ["eval", "--model", "{model}", "--output", "{in}"], "--output {in}: is a folder"),
    ("eval --output under /sys", ["eval", "--model", "{model}", "--output", "/sys/k15rl.json"], "lies under /sys"),
    ("sft --out read-only", ["sft", "--model", "{model}", "--data", "{in}/sft.jsonl", "--out", "{ro}/model"],
     "--out {ro}/model: {ro} is not writable"),
    ("dpo --out is a file", ["dpo", "--model", "{model}", "--data", "{in}/pairs.jsonl", "--out", "{in}/afile"],
     "--out {in}/afile: is a file"),
    ("dpo --ref-cache under /proc", ["dpo", "--model", "{model}", "--data", "{in}/pairs.jsonl", "--out", "{new}",
                                     "--ref-cache", "/proc/ref.pt"], "--ref-cache /proc/ref.pt"),
    ("long2short merge --out under /proc", ["long2short", "merge", "--long", "{model}", "--short", "{model}",
                                            "--out", "/proc/merged"], "--out /proc/merged"),
    ("long2short shortest-rs --out below a file", ["long2short", "shortest-rs", "--model", "{model}", "--data",
                                                   "{in}/good.jsonl", "--out", "{in}/afile/rs.jsonl"],
     "{in}/afile is a file"),
    ("long2short dpo-pairs --out read-only", ["long2short", "dpo-pairs", "--model", "{model}", "--data",
                                              "{in}/good.jsonl", "--out", "{ro}/pairs.jsonl"], "{ro} is not writable"),
    ("long2short report --out is a file", ["long2short", "report", "--models", "{model}", "--out", "{in}/afile"],
     "--out {in}/afile: is a file"),
    ("curate --out is a folder", ["curate", "--data", "{in}/good.jsonl", "--out", "{in}"], "--out {in}: is a folder"),
    ("curate --dropped under /proc", ["curate", "--data", "{in}/good.jsonl", "--out", "{new}", "--dropped",
                                      "/proc/dropped.jsonl"], "--dropped /proc/dropped.jsonl"),
    ("difficulty --out read-only", ["difficulty", "--model", "{model}", "--data", "{in}/good.jsonl", "--out",
                                    "{ro}/rated.jsonl"], "{ro} is not writable"),
    ("codetests --out under /proc", ["codetests", "--problems", "{in}/problems", "--out", "/proc/tests.jsonl"],
     "--out /proc/tests.jsonl"),
    ("convert-gguf --out is a file", ["convert-gguf", "--gguf", "{in}/bad.gguf", "--out", "{in}/afile"],
     "--out {in}/afile: is a file"),
    ("convert-gguf --out holds a model", ["convert-gguf", "--gguf", "{in}/bad.gguf", "--out", "{model}"],
     "output folder {model} already holds a model: pass --overwrite"),
    ("export-data --out under /proc", ["export-data", "--task", "arith", "--out", "/proc/rows.jsonl"],
     "--out /proc/rows.jsonl"),
    ("export-data --out read-only", ["export-data", "--task", "arith", "--out", "{ro}/rows.jsonl"],
     "{ro} is not writable"),
    ("export-data --out below a file", ["export-data", "--task", "arith", "--out", "{in}/afile/rows.jsonl"],
     "{in}/afile is a file"),
    ("warmup-data --out is a folder", ["warmup-data", "--out", "{in}"], "--out {in}: is a folder"),
    # values that types let through: inf, out-of-range optimizer settings, levels no task has
    ("lr = inf", ["train", "out={run}", "algorithm.lr=inf"], "config key algorithm.lr: must be a finite number"),
    ("temperature = nan", ["train", "out={run}", "rollout.temperature=.nan"], "rollout.temperature"),
    ("betas out of [0, 1), with --overwrite", ["train", "--overwrite", "out={run}", "algorithm.betas=[2,3]"],
     "algorithm.betas"),
    ("one beta", ["train", "out={run}", "algorithm.betas=[0.9]"], "algorithm.betas"),
    ("lr end ratio > 1", ["train", "out={run}", "algorithm.lr_end_ratio=2"], "algorithm.lr_end_ratio: must be in"),
    ("unknown lr schedule", ["train", "out={run}", "algorithm.lr_schedule=step"], "algorithm.lr_schedule"),
    ("weight decay < 0", ["train", "out={run}", "algorithm.weight_decay=-1"], "algorithm.weight_decay"),
    ("grad clip < 0", ["train", "out={run}", "algorithm.grad_clip=-1"], "algorithm.grad_clip"),
    ("eval budget < 1", ["train", "out={run}", "eval.max_new_tokens=-5"], "eval.max_new_tokens"),
    ("seed < 0", ["train", "out={run}", "seed=-1"], "config key seed"),
    ("empty out", ["train", "out="], "config key out"),
    ("few-shot examples beyond any context", ["train", "out={run}", "data.few_shot=100000"], "data.few_shot"),
    ("a test level no task has", ["train", "--overwrite", "out={run}", "data.tasks=[sort]", "data.test_levels=[0]"],
     "data.test_levels"),
    ("test_fraction without data files", ["train", "--overwrite", "out={run}", "model.path={model}",
                                          "data.test_fraction=0.5"], "data.test_fraction"),
    ("response budget beyond the context", ["train", "--overwrite", "out={run}", "model.path={model}",
                                            "rollout.max_new_tokens=100000"], "config key rollout.max_new_tokens"),
    ("unknown LoRA target, with --overwrite", ["train", "--overwrite", "out={run}", "model.path={model}",
                                               "model.lora.rank=2", "model.lora.target_modules=[nosuch]"],
     "model.lora.target_modules"),
    ("chat template that does not parse", ["train", "out={run}", "model.chat_template={{{{ bad"],
     "model.chat_template"),
    ("YAML key given twice", ["train", "--config", "{in}/dup.yaml", "out={run}"], "dup.yaml:4"),
    ("YAML not UTF-8", ["train", "--config", "{in}/latin1.yaml", "out={run}"], "latin1.yaml: not UTF-8"),
    ("config is a folder", ["train", "--config", "{in}/conf.d", "out={run}"], "conf.d: is a folder"),
    ("eval: every prompt beyond the context", ["eval", "--model", "{model}", "--output", "{new}",
                                               "data.train_files=[{in}/good.jsonl]", "data.test_files=[{in}/long.jsonl]"],
     "every test prompt is longer"),
    ("images for a text-only model", ["train", "--overwrite", "out={run}", "model.path={model}",
                                      "data.train_files=[{in}/img.jsonl]"], "img.jsonl line 1, field 'images'"),
    # command-line flags
    ("eval: model.path beside --model", ["eval", "--model", "{model}", "--output", "{new}", "model.path=/nonexistent"],
     "override model.path=...: this command takes it as --model"),
    ("demo: out= beside --out", ["demo", "--out", "{new}", "out={in}/other"], "override out=...: this command takes it as --out"),
    ("sft --threads < 0", ["sft", "--model", "{model}", "--data", "{in}/sft.jsonl", "--out", "{new}",
                           "--threads", "-2"], "--threads must be >= 0"),
    ("difficulty --max-new-tokens < 0", ["difficulty", "--model", "{model}", "--data", "{in}/good.jsonl",
                                         "--out", "{new}", "--max-new-tokens", "-5"], "--max-new-tokens"),
    ("difficulty --out is its --data", ["difficulty", "--model", "{model}", "--data", "{in}/good.jsonl",
                                        "--out", "{in}/good.jsonl"], "is also --data"),
    ("curate --dropped is its --out", ["curate", "--data", "{in}/good.jsonl", "--out", "{new}",
                                       "--dropped", "{new}"], "--dropped {new}: is also --out"),
    ("curate --no-heuristics without --model", ["curate", "--data", "{in}/good.jsonl", "--out", "{new}",
                                                "--no-heuristics"], "--no-heuristics"),
    ("curate --temperature < 0", ["curate", "--data", "{in}/good.jsonl", "--out", "{new}", "--model", "{model}",
                                  "--temperature", "-1"], "--temperature"),
    ("export-data: a task given twice", ["export-data", "--task", "sort,sort", "--out", "{new}.jsonl"],
     "--task sort,sort: names one more than once"),
    ("export-data: --split for reasoning-gym", ["export-data", "--task", "rg:chain_sum", "--split", "test",
                                                "--out", "{new}.jsonl"], "--levels / --split apply to built-in tasks"),
    ("export-data: --verifier for a built-in task", ["export-data", "--task", "sort", "--verifier", "integer",
                                                     "--out", "{new}.jsonl"], "--verifier applies to rg:NAME tasks"),
    ("export-data --out not .jsonl", ["export-data", "--task", "sort", "--out", "{new}.txt"],
     "--out {new}.txt: export-data writes JSON lines"),
    ("export-data: unknown verifier", ["export-data", "--task", "rg:chain_sum", "--n", "2", "--verifier", "nosuch",
                                       "--out", "{new}.jsonl"], "nosuch"),
    ("warmup-data: unknown task", ["warmup-data", "--tasks", "nosuch", "--out", "{new}"], "nosuch"),
    ("warmup-data --n < 1", ["warmup-data", "--n", "0", "--out", "{new}"], "--n must be >= 1"),
    ("sft: an empty response", ["sft", "--model", "{model}", "--data", "{in}/sft_empty.jsonl", "--out", "{new}"],
     "{in}/sft_empty.jsonl:2: field 'response' is empty"),
    ("sft: a prompt of --max-length tokens", ["sft", "--model", "{model}", "--data", "{in}/sft.jsonl", "--out", "{new}",
                                              "--max-length", "3"], "example 1: its prompt is"),
    ("dpo: chosen == rejected", ["dpo", "--model", "{model}", "--data", "{in}/pairs_same.jsonl", "--out", "{new}"],
     "{in}/pairs_same.jsonl:1: fields 'chosen' and 'rejected' are the same text"),
    ("eval with no data source", ["eval", "--model", "{model}", "--output", "{new}", "data.tasks=[]"],
     "config key data: no test prompts"),
    ("show a file", ["show", "{in}/afile"], "{in}/afile: is a file"),
    ("--resume with --overwrite", ["train", "--resume", "{run}", "--overwrite"], "--overwrite would replace it"),
    ("out= holds the user's own config.yaml", ["train", "--config", "{in}/own/config.yaml", "out={in}/own",
                                               "model.path={model}", "--overwrite"],
     "out {in}/own: holds a config.yaml that no run wrote"),
    # an output file that exists is replaced only with --overwrite
    ("eval --output exists", ["eval", "--model", "{model}", "--output", "{in}/afile"], "--output {in}/afile: already exists"),
    ("eval --responses exists", ["eval", "--model", "{model}", "--output", "{new}", "--responses", "{in}/afile"],
     "--responses {in}/afile: already exists"),
    ("warmup-data --out exists", ["warmup-data", "--out", "{in}/afile"], "--out {in}/afile: already exists"),
    ("export-data --out exists", ["export-data", "--task", "arith", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    ("curate --out exists", ["curate", "--data", "{in}/good.jsonl", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    ("curate --dropped exists", ["curate", "--data", "{in}/good.jsonl", "--out", "{new}", "--dropped", "{in}/afile"],
     "--dropped {in}/afile: already exists"),
    ("difficulty --out exists", ["difficulty", "--model", "{model}", "--data", "{in}/good.jsonl", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    ("codetests --out exists", ["codetests", "--problems", "{in}", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    ("shortest-rs --out exists", ["long2short", "shortest-rs", "--model", "{model}", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    ("dpo-pairs --out exists", ["long2short", "dpo-pairs", "--model", "{model}", "--out", "{in}/afile"],
     "--out {in}/afile: already exists"),
    # outputs that would destroy something else
    ("sft --out holds the user's files", ["sft", "--model", "{model}", "--data", "{in}/sft.jsonl", "--out", "{in}/own"],
     "output folder {in}/own is not empty and holds no model"),
    ("dpo --out is a run folder, with --overwrite", ["dpo", "--model", "{model}", "--data", "{in}/pairs.jsonl",
                                                     "--out", "{run}", "--overwrite"],
     "output folder {run} is not empty and holds no model"),
    ("eval --responses is its --output", ["eval", "--model", "{model}", "--output", "{new}", "--responses", "{new}"],
     "--responses {new}: is also --output"),
    ("long2short report: a report already there", ["long2short", "report", "--models", "{model}", "--out",
                                                   "{in}/report"], "--out {in}/report/report.md: already exists"),
    ("a model whose weights hold inf", ["eval", "--model", "{bad}/nonfinite", "--output", "{new}"],
     "holds inf or nan values"),
    ("--resume with out=", ["train", "--resume", "{run}", "out={in}/other"],
     "override out=...: this command takes it as --resume"),
    ("a .gz file that is not gzip", ["curate", "--data", "{in}/fake.jsonl.gz", "--out", "{new}"],
     "{in}/fake.jsonl.gz: not a readable gzip file"),
    ("a test file that does not exist", ["train", "--overwrite", "out={run}", "model.path={model}",
                                         "data.train_files=[{in}/good.jsonl]", "data.test_files=[{in}/nope.jsonl]"],
     "config key data.test_files: {in}/nope.jsonl does not exist"),
    ("dpo --ref-cache is not a cache", ["dpo", "--model", "{model}", "--data", "{in}/pairs.jsonl", "--out", "{new}",
                                        "--ref-cache", "{in}/afile"], "{in}/afile: not a reference log-prob cache"),
]


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_out_untouched(request, tmp_path, capsys, existing_run, tiny_model_dir, bad_models,
                                                 case, argv, needle):
    inputs = _files(tmp_path)
    new = tmp_path / "new"
    fill = {"run": str(existing_run), "model": str(tiny_model_dir), "in": str(inputs), "bad": str(bad_models),
            "new": str(new)}
    if any("{ro}" in a for a in argv):
        fill["ro"] = str(request.getfixturevalue("readonly_dir"))
    before, inputs_before = snapshot(existing_run), snapshot(inputs)
    code = main([a.format(**fill) for a in argv])
    # the error is one line; a progress bar of work done before it (loading the weights) is not part of it
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("k15rl: error:"), err
    assert needle.format(**fill) in err[0], err[0]
    assert snapshot(existing_run) == before
    assert snapshot(inputs) == inputs_before and not any(tmp_path.glob("new*"))  # nothing written


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


def test_a_data_file_that_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError while reading a data file (no permission: root reads anything, so the
    open is made to fail) is one line naming the file, exit 2, nothing written."""
    from k15rl.data import readers

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "answer": "1"}) + "\n")

    def no_permission(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(readers, "_open_text", no_permission)
    out = tmp_path / "out"
    code = main(["curate", "--data", str(rows), "--out", str(out)])
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("k15rl:")]
    assert code == 2 and err == [f"k15rl: error: data file {rows}: cannot be read (Permission denied)"], err
    assert not out.exists()
