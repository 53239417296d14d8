"""Built-in tasks: determinism, disjoint splits, verifiers, warm-up traces."""

import random
import re

import pytest

from k15rl.tasks import TASKS, Problem, get_task, make_prompts, split_of


def key(p):
    """What a prompt's split follows: its question, a visual task's scene (split_key), or
    the group of scenes held out together (split_group: vis_pattern's run)."""
    return p.meta.get("split_group", p.meta.get("split_key", p.question))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_by_seed(name):
    task = get_task(name)
    a = make_prompts(task, "train", 5, task.levels, seed=3)
    b = make_prompts(task, "train", 5, task.levels, seed=3)
    c = make_prompts(task, "train", 5, task.levels, seed=4)
    assert [key(p) for p in a] == [key(p) for p in b]
    assert [p.images for p in a] == [p.images for p in b]  # visual tasks: the same pixels
    assert [key(p) for p in a] != [key(p) for p in c]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_disjoint(name):
    task = get_task(name)
    levels = task.levels[1:] or task.levels  # level 1 of a task can be small
    n_train, n_test = (60, 4) if name == "vis_arc" else (200, 20)  # ARC: 800 tasks in all, 4 test ones at level 5
    train = {key(p) for p in make_prompts(task, "train", n_train, levels, seed=0)}
    test = {key(p) for p in make_prompts(task, "test", n_test, levels, seed=0)}
    assert train and test and not train & test
    assert all(split_of(q) == "test" for q in test)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_at_least_five_levels_and_traces_verify(name):
    task = get_task(name)
    assert len(task.levels) >= 5 or name == "rg_gsm_symbolic"  # reasoning-gym 0.1 has one gsm_symbolic difficulty
    rng = random.Random(0)
    for level in task.levels:
        for p in make_prompts(task, "train", 10, (level,), seed=1):
            trace = task.warmup_trace(Problem(p.question, p.answer, p.level, p.meta), rng)
            assert task.verify(trace, p.answer), (p.question, trace)
            assert not task.verify(trace.rsplit("answer:", 1)[0], p.answer)  # no final line -> 0


def test_levels_get_harder():
    task = get_task("arith")
    lens = [len(task.generate(random.Random(0), lv).meta["terms"]) for lv in task.levels]
    assert lens == sorted(lens) and lens[0] < lens[-1]


def test_warmup_traces_show_mistakes_and_corrections():
    task = get_task("arith")
    rng = random.Random(0)
    traces = [task.warmup_trace(task.generate(rng, 6), rng) for _ in range(50)]
    assert any("wait," in t for t in traces)
    assert all(t.startswith("plan:") and "check:" in t for t in traces)


def test_countdown_verifier_rejects_wrong_use_of_numbers():
    task = get_task("countdown")
    answer = "2 3 5 7=24"
    assert task.verify("answer: (7*3+5)-2", answer)
    assert not task.verify("answer: 7*3+3", answer)  # wrong numbers
    assert not task.verify("answer: 7*3+5-2+0", answer)  # extra number
    assert not task.verify("answer: 24", answer)
    assert not task.verify("answer: open('x')", answer)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


def test_reasoning_gym_tasks_levels_and_worked_solutions():
    """reasoning-gym generators as tasks: deterministic problems per level from the
    generator's own settings, integer answers checked on the final line, and
    gsm_symbolic's worked solution as the warm-up trace."""
    chain = get_task("rg_chain_sum")
    p1, p6 = (chain.generate(random.Random(5), lv) for lv in (1, 6))
    assert p1 == chain.generate(random.Random(5), 1)
    assert len(re.findall(r"\d+", p1.question)) == 2 and len(re.findall(r"\d+", p6.question)) == 4  # terms
    assert chain.verify(f"so\nanswer: {p6.answer}", p6.answer) and not chain.verify(f"answer: {p6.answer}.5", p6.answer)
    gsm = get_task("rg_gsm_symbolic")
    p = gsm.generate(random.Random(0), 1)
    trace = gsm.warmup_trace(p, random.Random(0))
    assert p.meta["answer_cot"].split("####")[0].strip() in trace and trace.endswith(f"answer: {p.answer}")
    with pytest.raises(ValueError, match="levels"):
        gsm.generate(random.Random(0), 2)
