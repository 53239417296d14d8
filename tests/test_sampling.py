"""Samplers (report §2.3.4): probabilities, schedules, state round trips."""

from collections import Counter

import pytest

from k15rl.sampling import CurriculumSampler, PrioritizedSampler, UniformSampler, make_sampler
from k15rl.types import Prompt, Trajectory


def _prompts(n, levels=(1,)):
    return [Prompt(str(i), (("user", f"q{i}"),), "", "sort", level=levels[i % len(levels)]) for i in range(n)]


def _traj(p, correct):
    return Trajectory(prompt=p, group=0, prompt_ids=[], response_ids=[], logprobs=[], finish_reason="stop",
                      correct=correct)


def test_prioritized_draws_in_proportion_to_one_minus_success():
    ps = _prompts(3)
    s = PrioritizedSampler(ps, seed=0, prior=0.5, prior_weight=1.0, min_weight=0.05)
    s.update([_traj(ps[0], True)] * 4)  # s_0 = (4 + 0.5) / 5 = 0.9 -> weight 0.1
    assert s.success_rate("0") == pytest.approx(0.9) and s.success_rate("1") == 0.5
    counts = Counter(s.sample(1)[0].id for _ in range(20000))
    expected = {"0": 0.1 / 1.1, "1": 0.5 / 1.1, "2": 0.5 / 1.1}
    for k, p in expected.items():
        assert counts[k] / 20000 == pytest.approx(p, abs=0.015)


def test_prioritized_never_starves_solved_prompts():
    ps = _prompts(2)
    s = PrioritizedSampler(ps, seed=1, min_weight=0.05)
    s.update([_traj(ps[0], True)] * 1000)
    assert s.weights()[0] == 0.05
    assert any(s.sample(1)[0].id == "0" for _ in range(500))


def test_prioritized_without_replacement_within_an_iteration():
    s = PrioritizedSampler(_prompts(10), seed=0)
    assert len({p.id for p in s.sample(10)}) == 10


def test_curriculum_gradual_raises_the_top_level():
    ps = _prompts(60, levels=(1, 2, 3, 4, 5, 6))
    s = CurriculumSampler(ps, schedule="gradual", warmup_iterations=5)
    assert [max(s.allowed_levels(i)) for i in range(7)] == [2, 3, 4, 5, 6, 6, 6]
    assert min(s.allowed_levels(0)) == 1


def test_curriculum_warmup_then_hard():
    s = CurriculumSampler(_prompts(60, levels=(1, 2, 3, 4, 5, 6)), warmup_iterations=2, hard_min_level=5)
    assert s.allowed_levels(1) == [1, 2, 3, 4, 5, 6] and s.allowed_levels(2) == [5, 6]
    with pytest.raises(ValueError, match="hard_min_level"):
        CurriculumSampler(_prompts(5, levels=(1, 2)), hard_min_level=4)


@pytest.mark.parametrize("name", ["uniform", "prioritized", "curriculum"])
def test_state_round_trip_continues_identically(name):
    import json

    ps = _prompts(30, levels=(1, 2, 3, 4, 5, 6))
    a = make_sampler(name, ps, seed=3, warmup_iterations=2)
    a.sample(7)
    a.update([_traj(ps[1], False), _traj(ps[2], True)])
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints store it as JSON
    b = make_sampler(name, ps, seed=99, warmup_iterations=2)
    b.load_state_dict(state)
    for _ in range(3):
        assert [p.id for p in a.sample(5)] == [p.id for p in b.sample(5)]


def test_uniform_covers_every_prompt_each_pass():
    s = UniformSampler(_prompts(6), seed=0)
    assert sorted(p.id for p in s.sample(6)) == [str(i) for i in range(6)]
