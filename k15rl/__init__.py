"""k15rl: the Kimi k1.5 reinforcement-learning recipe for LLM reasoning."""

__version__ = "0.1.0"
