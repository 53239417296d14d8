import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Llama with the built-in tokenizer, in HF format."""
    import torch

    from k15rl.models.builtin import BuiltinSpec, build_model, build_tokenizer
    from k15rl.trainer.warmup import warmup_examples

    spec = BuiltinSpec(sft_per_level=[20] * 6, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    examples = warmup_examples(spec)
    tok = build_tokenizer([m[-1]["content"] + "\n" + r for m, r in examples], 300)
    torch.manual_seed(0)
    model = build_model(spec, tok)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_small_vlm(cache, **sizes):
    """The built-in VLM's build (processor, LLaVA model, warm-up) with `sizes` (BuiltinSpec
    fields), cached in `cache` (not the user's cache)."""
    from dataclasses import replace

    from k15rl.models.builtin import BUILTIN_SPECS
    from k15rl.trainer.warmup import ensure_builtin

    old = os.environ.get("K15RL_CACHE")
    os.environ["K15RL_CACHE"] = str(cache)
    try:
        return ensure_builtin(replace(BUILTIN_SPECS["builtin-vision"], **sizes), log=lambda s: None)
    finally:
        if old is None:
            del os.environ["K15RL_CACHE"]
        else:
            os.environ["K15RL_CACHE"] = old


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory):
    """The built-in VLM shrunk to seconds."""
    return build_small_vlm(tmp_path_factory.mktemp("cache"), sft_per_level=[4] * 5, sft_epochs=1, hidden_size=32,
                           intermediate_size=64, num_layers=1, num_heads=2)


class Crash(Exception):
    """A process dying mid-run (raised from inside the loop by `crash_then_resume`)."""


@pytest.fixture
def crash_then_resume(monkeypatch):
    """`run(cfg, crash_at)`: train `cfg` until the process dies after the rollout of
    iteration `crash_at` (its score call raises `error`), call `before_resume()`, then
    resume the run; returns the resumed run's summary."""
    from k15rl.trainer import loop

    def run(cfg, crash_at: int, before_resume=lambda: None, error: type[BaseException] = Crash) -> dict:
        real_score, calls = loop.score, []

        def crashing_score(*a, **kw):
            calls.append(1)
            if len(calls) == crash_at:
                raise error
            return real_score(*a, **kw)

        monkeypatch.setattr(loop, "score", crashing_score)
        with pytest.raises(error):
            loop.train(cfg, log=lambda s: None)
        monkeypatch.setattr(loop, "score", real_score)
        before_resume()
        return loop.train(cfg, resume=True, log=lambda s: None)

    return run


def snapshot(folder) -> dict[str, str]:
    """Every file under `folder` and the sha256 of its bytes: equal before and after a
    command that must not have changed anything there."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_run_args(out, model, iterations: int = 1, *extra: str) -> list[str]:
    """`k15rl train` arguments of a run that takes seconds: the tiny model, level-1 sort,
    2 prompts x 2 samples of 4 tokens, one thread."""
    return ["train", f"out={out}", f"model.path={model}", "data.tasks=[sort]", "data.train_levels=[1]",
            "data.test_levels=[1]", "data.train_per_level=8", "data.test_per_level=2", f"iterations={iterations}",
            "rollout.k=2", "rollout.prompts_per_iteration=2", "rollout.max_new_tokens=4", "threads=1", *extra]
