"""The long-CoT task (subset sum by depth-first search): verifier, search against a
brute-force reference, heavy-tailed trace lengths, the overthinking knob, splits, seeds."""

import itertools
import random
import statistics

import pytest

from k15rl.models.builtin import build_tokenizer
from k15rl.tasks import Problem, get_task, make_prompts, split_of
from k15rl.tasks.subset_sum import (
    MAX_SEARCH_LINES,
    SubsetSumTask,
    _dfs,
    continued_search,
    search_lines,
)
from k15rl.verifiers import extract_answer

ANSWER = "12 9 7 5 3=20"


def _problems(task, n_per_level, seed=0):
    return [Problem(p.question, p.answer, p.level, p.meta) for p in make_prompts(task, "train", n_per_level, task.levels, seed)]


@pytest.mark.parametrize("response", [
    "answer: 12+5+3",
    "answer: 3+5+12",  # any order
    "answer: 12 + 5 + 3",
    "answer: 12+5+3=20",  # "sum = target"
    "answer: 12+5+3 = 20.",
    "12: 0+12=12 < 20, go on\nanswer: 12+9\nanswer: 12+5+3",  # the last answer line counts
])
def test_verify_accepts_any_valid_subset(response):
    assert SubsetSumTask().verify(response, ANSWER)
    other = "12 9 8 7 5 3=20"  # several subsets make 20: each scores
    assert all(SubsetSumTask().verify(f"answer: {s}", other) for s in ("12+8", "9+8+3", "8+7+5", "12+5+3"))


@pytest.mark.parametrize("response", [
    "answer: 12+8",  # 8 is not in the list
    "answer: 5+5+5+5",  # 5 used four times
    "answer: 12+7",  # 19
    "answer: 12+5+3=21",  # a wrong total after "="
    "answer: 20",  # the target, not a sum of listed numbers
    "answer: 12+5+3+0",  # 0 is not in the list
    "answer: 12-5+13",
    "answer: 12++5+3",
    "answer: twelve+5+3",
    "answer:",
    "12+5+3=20, found",  # no answer line
    "answer: 12+5+3\nanswer: 12+7",  # the last answer line counts
])
def test_verify_rejects_wrong_or_malformed(response):
    assert not SubsetSumTask().verify(response, ANSWER)


def test_search_by_hand():
    lines, subset = search_lines([12, 9, 7, 5, 3], 20)
    assert lines == ["12: 0+12=12 < 20, go on", "12+9: 12+9=21 > 20, over", "12+7: 12+7=19 < 20, go on",
                     "12+7+5: 19+5=24 > 20, over", "12+7+3: 19+3=22 > 20, over", "12+7: 19-7=12, back",
                     "12+5: 12+5=17 < 20, go on", "12+5+3: 17+3=20 = 20, found"]
    assert subset == [12, 5, 3]
    # searching on after the answer: step back out of the found branch, go on
    assert continued_search([12, 9, 7, 5, 3], 20, len(lines), 3) == ["12+5: 17-5=12, back", "12+3: 12+3=15 < 20, go on",
                                                                      "12+3: 15-3=12, back"]
    assert search_lines([9, 5], 3) == (["9: 0+9=9 > 3, over", "5: 0+5=5 > 3, over"], [])  # no subset: the whole tree


def _line(path: list[int], target: int, back: bool = False) -> str:
    total, n = sum(path), path[-1]
    if back:
        return f"{'+'.join(map(str, path))}: {total}-{n}={total - n}, back"
    verdict = "= {}, found" if total == target else "> {}, over" if total > target else "< {}, go on"
    return f"{'+'.join(map(str, path))}: {total - n}+{n}={total} {verdict.format(target)}"


def _next_line(line: str, nums: list[int], target: int) -> str | None:
    """The search's next line from its previous line and the list alone (None: the end)."""
    path = [int(x) for x in line.split(":")[0].split("+")]
    after = lambda n: nums[nums.index(n) + 1] if nums.index(n) + 1 < len(nums) else None  # noqa: E731
    if "go on" in line and after(path[-1]) is not None:
        return _line(path + [after(path[-1])], target)  # one level deeper
    if "go on" in line:
        return _line(path, target, back=True)  # nothing left to add: step back
    # over, found, back: the next number in place of the last one, else step back
    if after(path[-1]) is not None:
        return _line(path[:-1] + [after(path[-1])], target)
    return _line(path[:-1], target, back=True) if len(path) > 1 else None


def test_each_line_follows_from_the_one_before():
    """The path prefix makes the search local: each line is a function of the line before
    and the list alone (a model need not look back past one line to know where a step
    back returns to)."""
    rng = random.Random(1)
    for _ in range(300):
        nums = sorted(rng.sample(range(1, 30), rng.randint(3, 7)), reverse=True)
        target = rng.randint(1, sum(nums))
        lines = [line for line, _ in _dfs(nums, target)]  # the whole tree, past any "found"
        assert lines[0] == _line([nums[0]], target)
        assert [_next_line(a, nums, target) for a in lines] == lines[1:] + [None]


def test_search_finds_the_first_subset_of_a_brute_force_in_search_order():
    """Depth-first search, largest first, finds the lexicographically first index tuple."""
    rng = random.Random(0)
    for _ in range(300):
        nums = sorted(rng.sample(range(1, 40), rng.randint(3, 8)), reverse=True)
        target = rng.randint(1, sum(nums))
        combos = [c for k in range(1, len(nums) + 1) for c in itertools.combinations(range(len(nums)), k)]
        first = min((c for c in combos if sum(nums[i] for i in c) == target), default=None)
        _, subset = search_lines(nums, target)
        assert subset == ([nums[i] for i in first] if first else [])


def test_traces_verify_and_end_in_the_search_answer():
    task = SubsetSumTask(overthink_prob=1.0)
    rng = random.Random(0)
    for p in _problems(task, 10):
        trace = task.warmup_trace(p, rng)
        assert task.verify(trace, p.answer)
        assert extract_answer(trace) == p.meta["solution"]
        assert trace.startswith("plan:") and "check:" in trace
        assert not task.verify(trace.rsplit("answer:", 1)[0], p.answer)
        assert len(search_lines(p.meta["numbers"], p.meta["target"])[0]) <= MAX_SEARCH_LINES


def test_trace_lengths_are_long_and_heavy_tailed():
    """Tokens of a tokenizer built like the built-in one, 100 default traces per level:
    median >= 150, 99th percentile >= 6x the median, longest > 1,000 tokens; and every
    prompt with its trace fits 2,048 positions."""
    task = get_task("subset_sum")
    probs = _problems(task, 100)
    rng = random.Random(0)
    traces = [task.warmup_trace(p, rng) for p in probs]
    tok = build_tokenizer([p.question + "\n" + t for p, t in zip(probs, traces)], 512)
    lens = sorted(len(tok.encode(t)) for t in traces)
    median, p99 = statistics.median(lens), lens[int(0.99 * (len(lens) - 1))]
    assert median >= 150, median
    assert p99 >= 6 * median, (p99, median)
    assert lens[-1] > 1000, lens[-1]
    specials = 3  # <|user|>, <|assistant|>, <|end|>
    assert max(len(tok.encode(p.question)) + len(tok.encode(t)) + specials for p, t in zip(probs, traces)) <= 2048
    concise = [len(tok.encode(task.warmup_trace(p, rng, concise=True))) for p in probs]
    assert sum(concise) < 0.75 * sum(lens)  # the knob's default: over a quarter of the tokens are redundant


def test_overthinking_changes_length_not_answer():
    probs = _problems(SubsetSumTask(), 5)
    always, never = SubsetSumTask(overthink_prob=1.0), SubsetSumTask(overthink_prob=0.0)
    for p in probs:
        long = always.warmup_trace(p, random.Random(1))
        short = always.warmup_trace(p, random.Random(1), concise=True)
        assert extract_answer(long) == extract_answer(short) == p.meta["solution"]
        assert len(short) < len(long)
        assert "check again:" in long and "check again:" not in short
        assert short.split("\n")[:-1] == long.split("\n")[: short.count("\n")]  # the same search, cut after its check
        assert never.warmup_trace(p, random.Random(1)) == short
    # more overthinking, longer traces on average
    mean = [statistics.mean(len(SubsetSumTask(overthink_prob=q).warmup_trace(p, random.Random(i)))
                            for i, p in enumerate(probs)) for q in (0.0, 0.5, 1.0)]
    assert mean == sorted(mean) and mean[0] < mean[-1]
    with pytest.raises(ValueError):
        SubsetSumTask(overthink_prob=1.5)


def test_splits_disjoint_and_deterministic_by_seed():
    task = get_task("subset_sum")
    assert len(task.levels) >= 4
    train = make_prompts(task, "train", 200, task.levels[1:], seed=0)
    test = make_prompts(task, "test", 20, task.levels, seed=0)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question) == "test" for p in test)
    a, b, c = (make_prompts(task, "train", 5, task.levels, seed=s) for s in (3, 3, 4))
    assert [p.question for p in a] == [p.question for p in b] != [p.question for p in c]
    pa = Problem(a[-1].question, a[-1].answer, a[-1].level, a[-1].meta)
    assert task.warmup_trace(pa, random.Random(7)) == task.warmup_trace(pa, random.Random(7))


def test_builtin_long_spec_is_wired(monkeypatch, tmp_path):
    """"builtin-long" names a larger built-in spec for this task (its warm-up is not run here)."""
    import k15rl.trainer.resolve as resolve
    from k15rl.models.builtin import BUILTIN_SPECS, BuiltinSpec, builtin_dir

    spec = BUILTIN_SPECS["builtin-long"]
    assert spec.tasks == ["subset_sum"] and spec.levels == list(get_task("subset_sum").levels)
    assert spec.max_positions >= 2048 and len(spec.sft_per_level) == len(spec.levels)
    assert BUILTIN_SPECS["builtin"] == BuiltinSpec() and builtin_dir(spec) != builtin_dir(BuiltinSpec())
    asked = []
    monkeypatch.setattr(resolve, "ensure_builtin", lambda s, log=print: asked.append(s) or tmp_path)
    monkeypatch.setattr(resolve, "check_model_folder", lambda p, key: p)
    assert resolve.resolve_model_path("builtin-long") == tmp_path and asked == [spec]
    assert resolve.resolve_model_path("builtin") == tmp_path and asked[-1] == BuiltinSpec()


def test_a_new_trace_or_question_names_a_new_builtin_model(monkeypatch):
    """The built-in model's cache name follows its tasks' warm-up data (`warmup_digest`): a
    model warmed up on old traces or questions is never reused for new ones; other
    models' names do not move, and the name is stable from one call to the next."""
    from k15rl.models.builtin import BUILTIN_SPECS, spec_hash

    long, default = BUILTIN_SPECS["builtin-long"], BUILTIN_SPECS["builtin"]
    now = spec_hash(long), spec_hash(default)
    assert (spec_hash(long), spec_hash(default)) == now
    trace = SubsetSumTask.warmup_trace
    monkeypatch.setattr(SubsetSumTask, "warmup_trace", lambda self, p, rng: trace(self, p, rng).replace("go on", "go"))
    assert spec_hash(long) != now[0] and spec_hash(default) == now[1]
    monkeypatch.undo()
    # a random branch of the trace (overthinking: an extra check after the answer)
    import k15rl.tasks.subset_sum as subset_sum

    extra = subset_sum._extra_check
    monkeypatch.setattr(subset_sum, "_extra_check", lambda *a: extra(*a).upper())
    assert spec_hash(long) != now[0]
    monkeypatch.undo()
    generate = SubsetSumTask.generate
    monkeypatch.setattr(SubsetSumTask, "generate", lambda self, rng, level: (
        lambda p: type(p)(p.question.replace("Pick", "Choose"), p.answer, p.level, p.meta))(generate(self, rng, level)))
    assert spec_hash(long) != now[0] and spec_hash(default) == now[1]
