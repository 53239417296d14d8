"""Curation (report §2.1) and difficulty estimation (§2.3.4): the heuristic filters on
positive and negative examples, the easy-to-hack filter and pass rates with a scripted
engine, and the `curate` / `difficulty` commands end to end on a tiny model."""

import json
from pathlib import Path

import pytest

from k15rl.data.curate import (
    DIRECT_INSTRUCTION,
    direct_prompt,
    easy_to_hack,
    heuristic_reasons,
    is_multiple_choice,
    is_proof,
    is_true_false,
)
from k15rl.data.difficulty import SampleSettings, histogram, pass_rates
from k15rl.types import Prompt, Segment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.mark.parametrize("question, answer", [
    ("What is 7 * 8?\n(A) 54\n(B) 56\n(C) 58", "B"),
    ("What is 7 * 8?\nA) 54\nB) 56", "56"),
    ("What is 7 * 8?\na. 54\nb. 56", "56"),
    ("Pick one: (A) 54 (B) 56 (C) 58", "56"),
    ("Which of the following numbers is prime: 21, 23, 25?", "23"),
    ("Answer Choices: 54, 56, 58. What is 7 * 8?", "56"),
    ("What is 7 * 8?", "(C)"),
])
def test_multiple_choice_positive(question, answer):
    assert is_multiple_choice(question, answer)


@pytest.mark.parametrize("question, answer", [
    ("What is 7 * 8?", "56"),
    ("A. Smith buys 3 apples and 4 pears. How many fruits does he have?", "7"),
    ("Triangle ABC has AB = 3 and BC = 4 with a right angle at B. Find AC.", "5"),
    ("Let (a) be the first term of a sequence with a_2 = 5. Find a if the step is 2.", "3"),
    ("Solve for a: 2a = 10.", "5"),
])
def test_multiple_choice_negative(question, answer):
    assert not is_multiple_choice(question, answer)


@pytest.mark.parametrize("question, answer", [
    ("True or false: 1 is a prime number.", "false"),
    ("Is 91 prime?", "No"),
    ("Answer yes or no: is 2^10 > 1000?", "1"),
    ("Decide (True/False): the sum of two odd numbers is odd.", "F"),
    ("Is the statement correct?", "Incorrect."),
])
def test_true_false_positive(question, answer):
    assert is_true_false(question, answer)


@pytest.mark.parametrize("question, answer", [
    ("How many of the statements below are true?", "3"),
    ("Is 91 prime? If not, give its smallest prime factor.", "7"),
    ("What is the truth value count of x in {1, 2, 3}?", "3"),
    ("Find the number of falsehoods: 2"+"+2=5, 1+1=2.", "1"),
])
def test_true_false_negative(question, answer):
    assert not is_true_false(question, answer)


@pytest.mark.parametrize("question, answer", [
    ("Prove that there are infinitely many primes.", "proof"),
    ("Show that n^2 - n is even for every integer n.", ""),
    ("Give a proof of the AM-GM inequality for two numbers.", "QED"),
    ("Demonstrate that the product of two odd numbers is odd.", "ok"),
    ("Describe all integer solutions of x^2 - y^2 = 1.", "Only (1, 0) and (-1, 0), because " + "x " * 120),
])
def test_proof_positive(question, answer):
    assert is_proof(question, answer)


@pytest.mark.parametrize("question, answer", [
    ("Improve the bound: find the least n with 2^n > 1000.", "10"),
    ("A proven method gives 12 apples per tree; how many from 3 trees?", "36"),
    ("Show your work: what is 12 * 12?", "144"),
    ("What is the sum of the interior angles of a pentagon?", "540"),
])
def test_proof_negative(question, answer):
    assert not is_proof(question, answer)


def test_code_rows_are_not_judged_by_their_empty_answer():
    code = Prompt("c", (("user", "Write a function that returns n + 1."),), "", "math",
                  meta={"test_cases": [{"input": "1", "output": "2"}]})
    assert heuristic_reasons(code) == []
    mc_code = Prompt("d", (("user", "Which of the following functions is faster?"),), "", "math",
                     meta={"test_cases": []})
    assert heuristic_reasons(mc_code) == ["multiple_choice"]


def test_direct_prompt_asks_for_the_answer_only():
    p = Prompt("a", (("system", "s"), ("user", "1+1?")), "2", "math")
    d = direct_prompt(p)
    assert d.messages == (("system", "s"), ("user", f"1+1?\n\n{DIRECT_INSTRUCTION}")) and d.answer == "2"
    assert p.messages[1] == ("user", "1+1?")  # the original is unchanged


class ScriptedEngine:
    """Answers each request from a script keyed by the prompt text: for a prompt with
    `right` correct answers out of its samples, the first `right` samples are correct.
    Records what it was asked."""

    def __init__(self, tokenizer, script):
        self.tok, self.script, self.seen, self.params = tokenizer, script, [], []

    def generate(self, requests, params):
        self.params.append(params)
        counts = {}
        out = []
        for r in requests:
            text = self.tok.decode(r.prompt_ids)
            self.seen.append(text)
            key = next(k for k in self.script if k in text)
            right, answer = self.script[key]
            i = counts[key] = counts.get(key, -1) + 1
            reply = f"answer: {answer if i < right else 'nope'}"
            out.append(Segment(self.tok(reply, add_special_tokens=False)["input_ids"], [0.0] * 20, "stop"))
        return out

    def load_weights(self, state_dict):
        pass


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from k15rl.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _p(i, q, a):
    return Prompt(str(i), (("user", q),), a, "integer")


def test_easy_to_hack_drops_a_prompt_if_any_direct_attempt_is_right(tok):
    prompts = [_p(0, "what is 11+11", "22"), _p(1, "what is 22+22", "44"), _p(2, "what is 33+33", "66")]
    engine = ScriptedEngine(tok, {"11+11": (0, "22"), "22+22": (1, "44"), "33+33": (8, "66")})
    hacked = easy_to_hack(engine, tok, prompts, attempts=8, max_new_tokens=16, prompts_per_batch=2)
    assert hacked == [False, True, True]
    assert len(engine.seen) == 24 and all("Give only the final answer" in t for t in engine.seen)
    assert {p.max_new_tokens for p in engine.params} == {16}


def test_pass_rates_are_correct_answers_over_samples(tok):
    prompts = [_p(i, f"what is {i}{i}+0", f"{i}{i}") for i in range(1, 6)]
    script = {f"{i}{i}+0": (right, f"{i}{i}") for i, right in zip(range(1, 6), [0, 3, 7, 10, 10])}
    engine = ScriptedEngine(tok, script)
    rates = pass_rates(engine, tok, prompts, SampleSettings(samples=10, temperature=1.2, prompts_per_batch=2))
    assert rates == [0.0, 0.3, 0.7, 1.0, 1.0]
    assert {p.temperature for p in engine.params} == {1.2} and len(engine.seen) == 50


def test_pass_rates_and_easy_to_hack_use_the_runs_reward_and_stop_strings(tok):
    """With a reward router (the run's reward.* settings) the router decides what is right,
    not the prompt's verifier; rollout.stop_strings reach the engine."""
    from k15rl.rewards.compose import RewardRouter

    prompts = [_p(i, f"what is {i}{i}+0", f"{i}{i}") for i in range(1, 4)]
    engine = ScriptedEngine(tok, {f"{i}{i}+0": (right, f"{i}{i}") for i, right in zip(range(1, 4), [0, 3, 10])})
    wrong_is_right = RewardRouter(default=lambda text, prompt: float("nope" in text))
    settings = SampleSettings(samples=10, prompts_per_batch=3, stop_strings=("\nUser:",))
    assert pass_rates(engine, tok, prompts, settings, rewards=wrong_is_right) == [1.0, 0.7, 0.0]
    assert {tuple(p.stop_strings) for p in engine.params} == {("\nUser:",)}
    engine.params.clear()
    assert easy_to_hack(engine, tok, prompts, attempts=4, rewards=wrong_is_right,
                        stop_strings=["\nUser:"]) == [True, True, False]
    assert {tuple(p.stop_strings) for p in engine.params} == {("\nUser:",)}


def test_histogram_bins():
    assert histogram([0.0, 0.0, 0.1, 0.3, 0.5, 0.9, 1.0], bins=2) == [
        ("0", 2), ("(0, 0.5)", 2), ("[0.5, 1)", 2), ("1", 1)]


def test_curate_command_heuristics_only(tmp_path, capsys):
    from k15rl.cli import main
    from k15rl.config import load_config
    from k15rl.data import load_file

    out, dropped = tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    assert main(["curate", "--data", str(EXAMPLES / "math.jsonl"), "--out", str(out), "--dropped", str(dropped)]) == 0
    text = capsys.readouterr().out
    assert "1 duplicate prompts removed" in text
    for line in ("dropped by multiple_choice  2", "dropped by true_false       2", "dropped by proof            2",
                 "kept 24", "easy-to-hack filter not run"):
        assert line in text
    assert "domain" in text and "arithmetic" in text  # the summary table
    kept, _ = load_file(out, load_config(None, []).data, lambda s: None)
    assert len(kept) == 24 and not any(heuristic_reasons(p) for p in kept)
    rows = [json.loads(x) for x in dropped.read_text().splitlines()]
    assert sorted(r["dropped_by"][0] for r in rows) == ["multiple_choice"] * 2 + ["proof"] * 2 + ["true_false"] * 2


def test_curate_and_difficulty_commands_with_a_model(tmp_path, capsys, tiny_model_dir):
    from k15rl.cli import main

    out = tmp_path / "kept.jsonl"
    args = ["curate", "--data", str(EXAMPLES / "trl_chat.jsonl"), "--out", str(out), "--model", str(tiny_model_dir),
            "--attempts", "2", "--max-new-tokens", "3", "threads=1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dropped by easy_to_hack" in text and out.exists()
    rated = tmp_path / "rated.jsonl"
    args = ["difficulty", "--model", str(tiny_model_dir), "--data", str(out), "--out", str(rated), "--samples", "2",
            "--max-new-tokens", "3", "--temperature", "1.5", "threads=1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    rows = [json.loads(x) for x in rated.read_text().splitlines()]
    assert rows and all(r["pass_rate"] in (0.0, 0.5, 1.0) for r in rows)
    assert "2 samples each at temperature 1.5" in text


def test_difficulty_drop_solved(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """--drop-solved leaves out exactly the prompts with pass rate 1."""
    import k15rl.data.difficulty as difficulty
    from k15rl.cli import main

    monkeypatch.setattr(difficulty, "pass_rates", lambda engine, tok, prompts, settings, stops, rewards=None:
                        [1.0 if i % 3 == 0 else 0.5 for i in range(len(prompts))])
    rated = tmp_path / "rated.jsonl"
    assert main(["difficulty", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "trl_chat.jsonl"),
                 "--out", str(rated), "--drop-solved", "threads=1"]) == 0
    rows = [json.loads(x) for x in rated.read_text().splitlines()]
    assert len(rows) == 8 and all(r["pass_rate"] == 0.5 for r in rows)
    assert "dropped 4 prompts with pass rate 1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["curate", "--data", "nope.jsonl", "--out", "x.jsonl"], "nope.jsonl"),
    (["curate", "--data", str(EXAMPLES / "math.jsonl"), "--out", "x.jsonl", "--attempts", "0"], "--attempts"),
    (["difficulty", "--model", "/no/model", "--data", str(EXAMPLES / "math.jsonl"), "--out", "x.jsonl"], "/no/model"),
    (["difficulty", "--model", "builtin", "--data", str(EXAMPLES / "math.jsonl"), "--out", "x", "--samples", "0"],
     "--samples"),
    (["export-data", "--task", "nosuch", "--out", "x.jsonl"], "nosuch"),
])
def test_command_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    from k15rl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
