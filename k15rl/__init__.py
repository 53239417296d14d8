"""k15rl: the Kimi k1.5 reinforcement-learning recipe for LLM reasoning.

`k15rl.train(...)` runs it from Python (k15rl/api.py); `k15rl train` from the shell.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "train":  # imported on first use: `import k15rl` stays light (no torch)
        from k15rl.api import train

        return train
    raise AttributeError(f"module 'k15rl' has no attribute {name!r}")
