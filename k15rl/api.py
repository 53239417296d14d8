"""The Python API: the same run as `k15rl train`, from Python objects.

    import k15rl

    def reward(text: str, prompt) -> float:          # (response, Prompt) -> [0, 1]
        return float(prompt.answer in text)

    summary = k15rl.train("demo", "iterations=20", "out=runs/api",
                          reward_fn=reward, train_dataset=[{"prompt": "2+2?", "answer": "4"}, ...])

The command line calls this function; checkpoints, resume (`resume=True`, with the same
datasets and reward function passed again), logs and the summary are the same.
"""

from __future__ import annotations

from typing import Any, Callable

from k15rl.config import TrainConfig, load_config, to_dict


def train(config: str | TrainConfig | None = "demo", *overrides: str, reward_fn: Callable | None = None,
          train_dataset: Any = None, eval_dataset: Any = None, overwrite: bool = False, resume: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Run k1.5 RL; returns the run's summary (also OUT/summary.json).

    config: a preset name (`k15rl/configs/`), a YAML file, a `TrainConfig`, or None (the
    defaults); overrides: `"key=value"` strings, as on the command line.
    reward_fn: `(text: str, prompt: Prompt) -> float` in [0, 1], or a batched one (an
    attribute `batched = True`: lists in, a list out); it scores every data source that
    `reward.sources` does not name (instead of the task's verifier), with
    reward.timeout_s and reward.workers; an exception or timeout scores 0 and is counted.
    train_dataset / eval_dataset: lists of row dicts or `datasets.Dataset`s, in the
    layouts data files have (docs/data.md: prompt/question/messages, answer, ...); bad
    rows get the same one-line errors as a file's ("train_dataset, row 3, field ...").
    Without built-in tasks named (data.tasks), a train_dataset replaces the default task;
    without an eval_dataset, data.test_fraction holds part of it out.
    """
    if isinstance(config, TrainConfig):
        cfg = load_config(to_dict(config), overrides) if overrides else config.validate()
    else:
        cfg = load_config(config, overrides)
    if reward_fn is not None and not callable(reward_fn):
        from k15rl.errors import UserError

        raise UserError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    from k15rl.trainer.loop import train as run_loop

    return run_loop(cfg, overwrite=overwrite, resume=resume, log=log, reward_fn=reward_fn,
                    train_dataset=train_dataset, eval_dataset=eval_dataset)
