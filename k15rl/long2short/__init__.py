"""Long2short (report §2.4, RECIPE §8): make a long-CoT model answer with fewer tokens.

    merge.py     model merging: weight average of a long-CoT and a short-CoT model
    shortest.py  sampling n responses per question; shortest rejection sampling -> SFT data
    dpo.py       DPO pairs (chosen = shortest correct), DPO training (the loss: k15rl.algorithms.dpo_loss)
    report.py    token efficiency: accuracy against mean response tokens, per model

Long2short RL is the ordinary RL loop with the preset `long2short_rl` (length penalty
from iteration 0, a much smaller maximum response length).
"""

from k15rl.long2short.dpo import DPOConfig, Pair, PairExample, dpo_pairs, dpo_train
from k15rl.long2short.merge import merge_models, merge_state_dicts
from k15rl.long2short.shortest import Sample, SampledGroup, sample_groups, shortest_correct, shortest_rs_rows

__all__ = [
    "DPOConfig",
    "Pair",
    "PairExample",
    "Sample",
    "SampledGroup",
    "dpo_pairs",
    "dpo_train",
    "merge_models",
    "merge_state_dicts",
    "sample_groups",
    "shortest_correct",
    "shortest_rs_rows",
]
