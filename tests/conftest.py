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


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory):
    """The built-in VLM's build (processor, LLaVA model, warm-up), shrunk to seconds."""
    from dataclasses import replace

    from k15rl.models.builtin import BUILTIN_SPECS
    from k15rl.trainer.warmup import ensure_builtin

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("K15RL_CACHE")
    os.environ["K15RL_CACHE"] = str(cache)
    try:
        spec = replace(BUILTIN_SPECS["builtin-vision"], sft_per_level=[4] * 5, sft_epochs=1, hidden_size=32,
                       intermediate_size=64, num_layers=1, num_heads=2)
        return ensure_builtin(spec, log=lambda s: None)
    finally:
        if old is None:
            del os.environ["K15RL_CACHE"]
        else:
            os.environ["K15RL_CACHE"] = old
