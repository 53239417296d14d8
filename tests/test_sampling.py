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


def test_prioritized_frequencies_converge_to_the_stated_distribution():
    """P(p) = w_p / sum(w), w_p = max(1 - s_p, min_weight), s_p smoothed by the prior
    (the prompt's estimated pass rate where it has one)."""
    ps = [Prompt(str(i), (("user", f"q{i}"),), "", "sort", meta={"pass_rate": r} if r is not None else {})
          for i, r in enumerate([None, 0.0, 0.6, 1.0, None])]
    s = PrioritizedSampler(ps, seed=5, prior=0.5, prior_weight=2.0, min_weight=0.1)
    s.update([_traj(ps[4], True)] * 2 + [_traj(ps[4], False)] * 6)  # s_4 = (2 + 0.5*2) / (8 + 2) = 0.3
    # s = 0.5, 0.0, 0.6, 1.0, 0.3 -> w = 0.5, 1.0, 0.4, 0.1 (floor), 0.7; sum 2.7
    w = [0.5, 1.0, 0.4, 0.1, 0.7]
    assert s.weights() == pytest.approx(w)
    expected = [x / sum(w) for x in w]
    n = 60000
    counts = Counter(s.sample(1)[0].id for _ in range(n))
    tv = 0.5 * sum(abs(counts[str(i)] / n - expected[i]) for i in range(5))  # total variation distance
    assert tv < 0.01, tv
    assert counts["3"] / n == pytest.approx(0.1 / 2.7, abs=0.005)  # a solved prompt still comes back


def test_prioritized_prior_for_unseen_prompts():
    ps = _prompts(2)
    s = PrioritizedSampler(ps, prior=0.2, prior_weight=4.0)
    assert s.success_rate("0") == pytest.approx(0.2)
    s.update([_traj(ps[0], True)] * 4)  # (4 + 0.2 * 4) / (4 + 4) = 0.6
    assert s.success_rate("0") == pytest.approx(0.6) and s.success_rate("1") == pytest.approx(0.2)


def _rated(rates):
    return [Prompt(str(i), (("user", f"q{i}"),), "", "math", meta={"pass_rate": r, "difficulty": float(1 + i % 3)})
            for i, r in enumerate(rates)]


def test_curriculum_by_estimated_pass_rate_warmup_then_hard():
    ps = _rated([1.0, 0.9, 0.6, 0.5, 0.2, 0.0] * 5)
    s = CurriculumSampler(ps, difficulty="pass_rate", warmup_iterations=2, hard_max_pass_rate=0.5)
    first, second, third = s.sample(30), s.sample(30), s.sample(12)
    assert {p.meta["pass_rate"] for p in first} == {1.0, 0.9, 0.6, 0.5, 0.2, 0.0}  # uniform warm-up
    assert len({p.id for p in second}) == 30
    assert {p.meta["pass_rate"] for p in third} == {0.5, 0.2, 0.0}  # then hard only


def test_curriculum_gradual_by_pass_rate_positions():
    ps = _rated([1.0, 0.75, 0.5, 0.25, 0.0])
    s = CurriculumSampler(ps, schedule="gradual", difficulty="pass_rate", warmup_iterations=4)
    # hardness 1 - pass rate in {0, .25, .5, .75, 1}; top = (i + 1) / 4
    allowed = [sorted(s.allowed_levels(i)) for i in range(5)]
    assert allowed == [[0.0, 0.25], [0.0, 0.25, 0.5], [0.0, 0.25, 0.5, 0.75], [0.0, 0.25, 0.5, 0.75, 1.0],
                       [0.0, 0.25, 0.5, 0.75, 1.0]]
    assert {p.meta["pass_rate"] for p in s.sample(50)} == {1.0, 0.75}


def test_curriculum_by_dataset_label():
    ps = _rated([0.5] * 9)  # labels 1, 2, 3
    s = CurriculumSampler(ps, difficulty="label", warmup_iterations=1, hard_min_level=3)
    assert s.allowed_levels(0) == [1.0, 2.0, 3.0] and s.allowed_levels(1) == [3.0]
    s.sample(3)
    assert {p.meta["difficulty"] for p in s.sample(3)} == {3.0}


def test_curriculum_needs_the_chosen_difficulty():
    with pytest.raises(ValueError, match="no pass_rate"):
        CurriculumSampler(_prompts(4), difficulty="pass_rate")
    with pytest.raises(ValueError, match="no difficulty"):
        CurriculumSampler(_prompts(4), difficulty="label")
    with pytest.raises(ValueError, match="hard_max_pass_rate"):
        CurriculumSampler(_rated([0.9, 1.0]), difficulty="pass_rate", hard_max_pass_rate=0.5)


@pytest.mark.parametrize("name", ["uniform", "prioritized", "curriculum"])
def test_state_round_trip_through_a_checkpoint(name, tmp_path, tiny_model_dir):
    """The state a checkpoint holds (state.json beside the weights) restores the sampler:
    statistics, schedule position and RNG, so a resumed run draws the same prompts."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from k15rl.trainer.checkpoint import save_hf

    ps = _prompts(30, levels=(1, 2, 3, 4, 5, 6))
    a = make_sampler(name, ps, seed=3, warmup_iterations=2)
    for _ in range(3):
        batch = a.sample(6)
        a.update([_traj(p, i % 2 == 0) for i, p in enumerate(batch)])
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    save_hf(model, tok, tmp_path / "ckpt", {"iteration": 3, "sampler": a.state_dict()})
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())["sampler"]
    b = make_sampler(name, ps, seed=123, warmup_iterations=2)
    b.load_state_dict(state)
    if name == "prioritized":
        assert b.weights() == a.weights()
    for _ in range(4):
        assert [p.id for p in a.sample(5)] == [p.id for p in b.sample(5)]


def test_settings_of_another_sampler_are_said_to_be_ignored(tmp_path, capsys, tiny_model_dir):
    """sampler.prior is the prioritized sampler's: a run with the uniform one says it
    ignores it (as the Ray settings of a local run), and keeps quiet about defaults."""
    from conftest import tiny_run_args

    from k15rl.cli import main
    from k15rl.sampling import sampler_options

    assert sampler_options("uniform") == set() and "prior" in sampler_options("prioritized")
    assert main(tiny_run_args(tmp_path / "a", tiny_model_dir, 1, "sampler.prior=0.9", "eval.every=0")) == 0
    out = capsys.readouterr()
    said = [x for x in (out.out + out.err).splitlines() if "are ignored" in x]
    assert said == ["sampler.name=uniform: sampler.prior=0.9 apply to other samplers and are ignored"], said
    assert main(tiny_run_args(tmp_path / "b", tiny_model_dir, 1, "sampler.name=prioritized", "sampler.prior=0.9",
                              "eval.every=0")) == 0
    out = capsys.readouterr()
    assert not [x for x in (out.out + out.err).splitlines() if "are ignored" in x]
