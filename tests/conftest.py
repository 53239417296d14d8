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
