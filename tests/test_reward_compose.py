"""Reward composition per data source, with time limits (rewards/compose.py)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from k15rl.config import load_config
from k15rl.errors import UserError
from k15rl.rewards import score
from k15rl.verifiers import verify_math
from k15rl.rewards.compose import RewardRouter, parse_sources, resolve_reward
from k15rl.trainer.resolve import router_from_config
from k15rl.types import Prompt, Trajectory


def slow_reward(text: str, prompt: Prompt) -> float:
    time.sleep(5)
    return 1.0


def broken_reward(text: str, prompt: Prompt) -> float:
    raise RuntimeError("boom")


def length_reward_fn(text: str, prompt: Prompt) -> float:
    return 1.0 if len(text) == 3 else 0.0


def too_big(text: str, prompt: Prompt) -> float:
    return 3.0


def batched_reward(texts, prompts):
    return [1.0 if t == "yes" else 0.0 for t in texts]


batched_reward.batched = True


def _prompt(i: int, source: str, answer: str = "4", task: str = "math", meta=None) -> Prompt:
    return Prompt(f"p{i}", (("user", "q"),), answer, task, meta={"source": source, **(meta or {})})


def _traj(p: Prompt, text: str, group: int = 0) -> Trajectory:
    return Trajectory(p, group, [1], [1, 2, 3], [0.0, 0.0, 0.0], "stop", text=text)


def test_sources_pick_functions_and_failures_score_zero():
    with ThreadPoolExecutor(2) as ex:  # start two math-verify workers: not part of the timed calls
        assert all(ex.map(lambda _: verify_math("answer: 1", "1"), range(2)))
    router = RewardRouter({"a": "math", "b": f"{__name__}:length_reward_fn", "slow": f"{__name__}:slow_reward",
                           "bad": f"{__name__}:broken_reward"}, timeout_s=1.0, workers=4)
    prompts = [_prompt(0, "a"), _prompt(1, "a"), _prompt(2, "b"), _prompt(3, "slow"), _prompt(4, "bad"),
               _prompt(5, "unlisted", task="integer")]
    texts = ["answer: 4", "answer: 5", "abc", "answer: 4", "answer: 4", "answer: 4"]
    t0 = time.monotonic()
    outcomes, stats = router.score(texts, prompts)
    assert time.monotonic() - t0 < 3.0  # the 5 s function was not waited for
    assert [o.value for o in outcomes] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [o.status for o in outcomes] == ["ok", "ok", "ok", "timeout", "error", "ok"]
    assert (stats.timeouts, stats.errors, stats.by_source) == (1, 1, {"slow": 1, "bad": 1})


def test_batched_functions_get_one_call():
    router = RewardRouter({"j": f"{__name__}:batched_reward"})
    outcomes, _ = router.score(["yes", "no", "yes"], [_prompt(i, "j") for i in range(3)])
    assert [o.value for o in outcomes] == [1.0, 0.0, 1.0]


class SlowBatch:
    """A batched reward that takes `per_item` seconds a response, after a `prepare` (a
    model load) of `load` seconds, one response at a time (`parallel`)."""

    batched = True
    parallel = 1

    def __init__(self, per_item: float, load: float):
        self.per_item, self.load, self.prepared = per_item, load, 0

    def prepare(self):
        if not self.prepared:
            time.sleep(self.load)
        self.prepared += 1

    def __call__(self, texts, prompts):
        time.sleep(self.per_item * len(texts))
        return [1.0] * len(texts)


def test_a_batched_rewards_limits_are_per_response_and_its_load_is_not_timed():
    """The judge scores a whole batch in one call, `parallel` responses at a time, and loads
    its model on first use: with a limit of 0.5 s a round, a batch of 4 one at a time at
    0.3 s each (1.2 s) after a 1 s load passes; the same function at 0.7 s a response
    times out; scoring all 4 at once (one round), 1.2 s is over the limit."""
    router = RewardRouter(timeout_s=0.5, default=SlowBatch(0.3, 1.0))
    outcomes, stats = router.score(["a"] * 4, [_prompt(i, "j") for i in range(4)])
    assert [o.status for o in outcomes] == ["ok"] * 4 and stats.timeouts == 0
    router = RewardRouter(timeout_s=0.5, default=SlowBatch(0.7, 0.0))
    outcomes, stats = router.score(["a"] * 2, [_prompt(i, "j") for i in range(2)])
    assert [o.status for o in outcomes] == ["timeout"] * 2 and "within 1 s" in outcomes[0].message
    wide = SlowBatch(0.3, 0.0)
    wide.parallel = 4
    outcomes, _ = RewardRouter(timeout_s=0.5, default=wide).score(["a"] * 4, [_prompt(i, "j") for i in range(4)])
    assert [o.status for o in outcomes] == ["timeout"] * 4 and "within 0.5 s" in outcomes[0].message


def test_out_of_range_values_are_errors():
    router = RewardRouter({"x": f"{__name__}:too_big"})
    outcomes, stats = router.score(["abc"], [_prompt(0, "x")])
    assert outcomes[0].value == 0.0 and stats.errors == 1 and "outside" in outcomes[0].message


def test_score_uses_the_router_and_counts():
    prompts = [_prompt(0, "a"), _prompt(1, "bad")]
    trajs = [_traj(prompts[0], "answer: 4"), _traj(prompts[1], "answer: 4", group=1)]
    stats = score(trajs, rewards=RewardRouter({"bad": f"{__name__}:broken_reward"}))
    assert [t.reward for t in trajs] == [1.0, 0.0] and [t.correct for t in trajs] == [True, False]
    assert stats.verifier_errors == 1


def test_code_prompts_are_graded_without_a_router():
    tests = [{"input": "3", "output": "6"}]
    p = Prompt("c", (("user", "double"),), json.dumps({"tests": tests}), "code_tests", meta={"tests": tests})
    good = _traj(p, "```python\nprint(int(input()) * 2)\n```")
    bad = _traj(p, "```python\nprint(5)\n```")
    score([good, bad])
    assert (good.reward, bad.reward) == (1.0, 0.0)


def test_config_errors_name_the_key():
    from k15rl.trainer.resolve import check_names

    assert parse_sources(["x=math"]) == {"x": "math"}
    with pytest.raises(UserError, match=r"reward.sources\[0\]: expected 'source=reward'"):
        check_names(load_config(None, ["reward.sources=[nonsense]"]))
    with pytest.raises(UserError, match=r"reward.sources\[0\]: unknown reward 'nope'"):
        check_names(load_config(None, ["reward.sources=[a=nope]"]))
    with pytest.raises(UserError, match="cannot load 'no_such_module:f'"):
        check_names(load_config(None, ["reward.sources=[a=no_such_module:f]"]))
    with pytest.raises(UserError, match="judge_model"):
        resolve_reward("judge")
    cfg = load_config(None, ["reward.sources=[a=math, b=code_tests]", "reward.timeout_s=5"])
    router = router_from_config(cfg.reward)
    assert router.timeout_s == 5 and set(router.sources) == {"a", "b"}


def test_the_judge_gets_a_resolved_folder(tiny_model_dir, tmp_path):
    """reward.judge_model is resolved above rewards/ (trainer/resolve.py); a folder that
    is not a model is refused when the config's names are checked, before a run touches anything."""
    cfg = load_config(None, ["reward.sources=[free=judge]", f"reward.judge_model={tiny_model_dir}"])
    router = router_from_config(cfg.reward)
    assert router._fns["free"].model_dir == str(tiny_model_dir) and router._fns["free"].device == "cpu"
    assert router._fns["free"].parallel == 1  # not loaded yet
    router._fns["free"].prepare()
    assert router._fns["free"].parallel == 16  # its engine's slots: the router's rounds
    # the judge loads on reward.judge_device; one this machine lacks is refused with the config's names
    on = load_config(None, ["reward.sources=[free=judge]", f"reward.judge_model={tiny_model_dir}",
                            "reward.judge_device=cuda:7"])
    judge = router_from_config(on.reward)._fns["free"]
    assert judge.device == "cuda:7"
    import torch

    from k15rl.trainer.resolve import check_names

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^config key reward\.judge_device=cuda:7: no CUDA device"):
            check_names(on)
        with pytest.raises(UserError, match=r"^config key reward\.judge_device=cuda:7: no CUDA device"):
            judge.prepare()

    with pytest.raises(UserError, match="reward.judge_model: .* is not a Hugging Face model folder"):
        check_names(load_config(None, ["reward.sources=[free=judge]", f"reward.judge_model={tmp_path / 'none'}"]))
    # without a judge source the judge model is neither checked nor resolved
    assert check_names(load_config(None, [f"reward.judge_model={tmp_path / 'none'}"])).reward.judge_model
    # a built-in model's name passes the check (it is built when the router is made)
    from k15rl.models.builtin import BUILTIN_SPECS

    for name in BUILTIN_SPECS:
        assert check_names(load_config(None, ["reward.sources=[free=judge]", f"reward.judge_model={name}"]))


def test_a_math_answer_that_never_finishes_scores_zero_and_the_run_goes_on(monkeypatch):
    """Through the router, as in training: the comparison is stopped at the math limit,
    scored 0 and counted, well before reward.stuck_timeout_s would stop the run."""
    from k15rl.verifiers import math_pool

    monkeypatch.setattr(math_pool, "TIMEOUT_S", 1.0)
    router = RewardRouter({"a": "math"}, timeout_s=30.0, stuck_timeout_s=60.0, workers=2)
    prompts = [_prompt(i, "a", answer="2x") for i in range(3)]  # symbolic: sympy gets the answer
    t0 = time.monotonic()
    outcomes, stats = router.score(["answer: x+x", "answer: 9^{9^{9^{9}}}", "answer: 2 x"], prompts)
    assert time.monotonic() - t0 < 10.0
    assert [o.value for o in outcomes] == [1.0, 0.0, 1.0]
    assert "TimeoutError" in outcomes[1].message and stats.errors == 1
