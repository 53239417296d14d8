"""Length reward (report §2.3.3, RECIPE §3) against hand-computed numbers.

lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len) within the group of one prompt;
reward lambda_i if correct, min(0, lambda_i) if wrong; 0 for a group of equal lengths.
"""

import pytest
import torch

from k15rl.rewards import length_reward, length_weight, score
from k15rl.types import Prompt, Trajectory


def lr(lengths, correct, groups):
    return length_reward(torch.tensor(lengths), torch.tensor(correct), torch.tensor(groups)).tolist()


def test_all_equal_lengths_give_zero():
    assert lr([7, 7, 7], [1, 0, 1], [0, 0, 0]) == [0.0, 0.0, 0.0]


def test_single_correct_response():
    # min 10, max 50, span 40: lambda = 0.5, 0.25, 0.0, -0.5
    assert lr([10, 20, 30, 50], [0, 1, 0, 0], [0, 0, 0, 0]) == pytest.approx([0.0, 0.25, 0.0, -0.5])
    assert lr([10, 20, 30, 50], [1, 0, 0, 0], [0, 0, 0, 0]) == pytest.approx([0.5, 0.0, 0.0, -0.5])


def test_all_wrong_only_penalises_the_longer_half():
    # lambda = 0.5, 0.25, 0.0, -0.5 -> min(0, lambda)
    assert lr([10, 20, 30, 50], [0, 0, 0, 0], [1, 1, 1, 1]) == pytest.approx([0.0, 0.0, 0.0, -0.5])


def test_all_correct_spans_plus_to_minus_half():
    assert lr([40, 10, 30], [1, 1, 1], [0, 0, 0]) == pytest.approx([-0.5, 0.5, -1 / 6])


def test_mixed_groups_in_one_batch_use_their_own_min_and_max():
    # group 5: lengths 100, 300, 200 (span 200) -> lambda 0.5, -0.5, 0.0
    # group 2: lengths 4, 8 -> lambda 0.5, -0.5;  group 9: one response -> 0
    got = lr([100, 4, 300, 8, 200, 42], [1, 1, 0, 0, 1, 1], [5, 2, 5, 2, 5, 9])
    assert got == pytest.approx([0.5, 0.5, -0.5, -0.5, 0.0, 0.0])


def test_a_group_is_unaffected_by_the_others():
    alone = lr([100, 300, 200], [1, 0, 1], [0, 0, 0])
    together = lr([100, 1, 300, 10_000, 200], [1, 0, 0, 1, 1], [0, 1, 0, 1, 0])
    assert [together[i] for i in (0, 2, 4)] == pytest.approx(alone)


def test_permuting_rows_permutes_the_result():
    lengths, correct, groups = [12, 30, 7, 19, 30, 5], [1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]
    perm = [4, 0, 5, 2, 1, 3]
    base = lr(lengths, correct, groups)
    permuted = lr([lengths[i] for i in perm], [correct[i] for i in perm], [groups[i] for i in perm])
    assert permuted == pytest.approx([base[i] for i in perm])


def test_empty_batch():
    assert lr([], [], []) == []


def test_warmup_step_schedule():
    assert [length_weight(i, 0.2, 3) for i in range(5)] == [0.0, 0.0, 0.0, 0.2, 0.2]
    assert [length_weight(i, 0.2, 0) for i in range(2)] == [0.2, 0.2]


def test_score_adds_the_weighted_length_reward_to_the_task_reward():
    p = Prompt("p", (("user", "2+2?"),), "4", "integer")

    def traj(text, n_tokens, group):
        return Trajectory(prompt=p, group=group, prompt_ids=[1], response_ids=list(range(n_tokens)),
                          logprobs=[0.0] * n_tokens, finish_reason="stop", text=text)

    ts = [traj("answer: 4", 10, 0), traj("answer: 4", 20, 0), traj("answer: 5", 30, 0), traj("answer: 4", 99, 1)]
    score(ts, length_penalty_weight=0.1)
    # group 0: lambda 0.5, 0.0, -0.5 -> 1 + 0.05, 1 + 0, 0 - 0.05; group 1 alone -> 1
    assert [t.reward for t in ts] == pytest.approx([1.05, 1.0, -0.05, 1.0])
    assert [t.reward_terms["length"] for t in ts] == pytest.approx([0.05, 0.0, -0.05, 0.0])
    score(ts, length_penalty_weight=0.0)
    assert [t.reward for t in ts] == [1.0, 1.0, 0.0, 1.0] and "length" not in ts[0].reward_terms


def test_rollout_metrics_report_right_and_wrong_lengths_apart():
    from k15rl.rollout.collect import PartialRolloutResult
    from k15rl.rollout.replay import ReplayBuffer
    from k15rl.trainer.run import rollout_metrics

    p = Prompt("p", (("user", "2+2?"),), "4", "integer")
    ts = [Trajectory(p, 0, [1], [5] * n, [0.0] * n, "stop", correct=ok) for n, ok in ((10, True), (30, True), (100, False))]
    m = rollout_metrics(PartialRolloutResult(trajectories=ts), ReplayBuffer(), 1.0)
    assert m["rollout/len_mean"] == pytest.approx(140 / 3)
    assert m["rollout/len_mean_correct"] == 20.0 and m["rollout/len_mean_wrong"] == 100.0
    m = rollout_metrics(PartialRolloutResult(trajectories=ts[:2]), ReplayBuffer(), 1.0)
    assert "rollout/len_mean_wrong" not in m  # no wrong response: no mean of nothing


def test_evaluation_summary_gives_the_mean_length_of_right_answers():
    from k15rl.trainer.evaluate import summarize

    p = Prompt("p", (("user", "2+2?"),), "4", "integer", level=2)
    ts = [Trajectory(p, 0, [1], [5] * n, [0.0] * n, "stop", correct=ok) for n, ok in ((10, True), (30, True), (200, False))]
    s = summarize(ts)
    assert s["mean_tokens"] == pytest.approx(80.0) and s["mean_tokens_correct"] == 20.0
    assert s["per_level"]["2"]["mean_tokens_correct"] == 20.0
    assert summarize(ts[2:])["mean_tokens_correct"] is None
