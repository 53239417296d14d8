"""Model cards (README.md) in every HF folder k15rl writes: front matter that parses,
naming the base model, the loss, the iterations and the k15rl version."""

import json

import yaml

from k15rl.cli import main
from k15rl.config import load_config, to_dict
from k15rl.trainer.card import model_card, package_version, run_card


def card_of(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "transformers" and "k15rl" in meta["tags"]
    assert f"k15rl {package_version()}" in text
    return meta, text


def test_run_card_names_recipe_data_iterations_and_evals():
    cfg = load_config("demo", ["data.train_files=[a.jsonl]", "algorithm.loss=grpo", "reward.length_weight=0.5"])
    evals = [{"iteration": 0, "temperature": 1.0, "accuracy": 0.25, "accuracy_ci95": 0.05, "mean_tokens": 40.0,
              "n": 100}]
    text = run_card(cfg, 7, evals)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "builtin" and "reinforcement-learning" in meta["tags"] and "grpo" in meta["tags"]
    for needle in ("| loss | grpo |", f"| tau | {cfg.algorithm.tau:g} |", f"| k | {cfg.rollout.k} |",
                   "| length penalty weight | 0.5 |", "train file: a.jsonl", "Iterations done: 7",
                   "| 0 | 1 | 0.250 ± 0.050 | 40.0 | 100 |"):
        assert needle in text, needle
    assert run_card(yaml.safe_load(yaml.safe_dump(to_dict(cfg))), 7, evals) == text  # as read from config.yaml


def test_save_hf_writes_the_card(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from k15rl.trainer.checkpoint import save_hf

    card = model_card(base_model="some/base", kind="rl", recipe={"loss": "k15"}, data=["task sort"], iterations=2)
    save_hf(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
            tmp_path / "m", {"iteration": 2}, card=card)
    meta, text = card_of(tmp_path / "m")
    assert meta["base_model"] == "some/base" and "Iterations done: 2" in text


def test_checkpoints_of_a_run_have_cards(tmp_path, tiny_model_dir):
    from k15rl.trainer.loop import train

    out = tmp_path / "run"
    cfg = load_config(None, [f"out={out}", f"model.path={tiny_model_dir}", "data.tasks=[sort]", "iterations=2",
                             "data.train_per_level=4", "data.test_per_level=1", "rollout.k=2",
                             "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "eval.every=1",
                             "checkpoint_every=1", "threads=1"])
    train(cfg, log=lambda s: None)
    meta, text = card_of(out / "checkpoints" / "iter_000002")
    assert meta["base_model"] == str(tiny_model_dir)
    assert "| loss | k15 |" in text and "Iterations done: 2" in text and "## Evaluation" in text
    assert "Iterations done: 1" in (out / "checkpoints" / "iter_000001" / "README.md").read_text()
    final_meta, final_text = card_of(out / "final")
    assert final_meta["base_model"] == str(tiny_model_dir) and "Iterations done: 2" in final_text


def test_sft_dpo_and_merge_outputs_have_cards(tmp_path, tiny_model_dir):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "response": str(i + 1)}) for i in range(4)))
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(sft), "--out", str(tmp_path / "s"),
                 "--batch-size", "2"]) == 0
    meta, text = card_of(tmp_path / "s")
    assert meta["base_model"] == str(tiny_model_dir) and "sft" in meta["tags"] and str(sft) in text

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": f"{i} {i} {i}"})
                               for i in range(4)))
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(pairs), "--out", str(tmp_path / "d"),
                 "--batch-size", "2"]) == 0
    meta, text = card_of(tmp_path / "d")
    assert "dpo" in meta["tags"] and "| loss | dpo |" in text and "| beta | 0.1 |" in text

    assert main(["long2short", "merge", "--long", str(tmp_path / "d"), "--short", str(tmp_path / "s"),
                 "--out", str(tmp_path / "m")]) == 0
    meta, text = card_of(tmp_path / "m")
    assert meta["base_model"] == str(tmp_path / "d") and "merge" in meta["tags"] and "| weight of long | 0.5 |" in text
