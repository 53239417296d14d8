"""The LM head fused with the token log-probs (k15rl.trainer.head): against log_softmax."""

import pytest
import torch
import transformers

import k15rl.trainer.head as head_mod
from k15rl.trainer.head import HeadLogprobs, fused_head, fuses_head
from k15rl.trainer.update import _fuses_adamw


def _reference(hidden, weight, targets, temperature):
    logits = (hidden @ weight.t()).float() / temperature  # [M, V]
    return torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)  # [M]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_bytes,row_block", [(1 << 30, 1 << 20), (4 * 37 * 3, 5), (4 * 37, 1)])
def test_values_and_gradients_equal_log_softmax(temperature, chunk_bytes, row_block, monkeypatch):
    """In float64 the fused head's log-probs and both gradients are log_softmax's to the last
    bits, whatever the chunking: one chunk, chunks of 3 rows (forward) and 5-row blocks with
    vocabulary chunks (backward), one row at a time."""
    monkeypatch.setattr(head_mod, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(head_mod, "ROW_BLOCK", row_block)
    g = torch.Generator().manual_seed(0)
    M, H, V = 11, 6, 37
    hidden = torch.randn(M, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (M,), generator=g)
    upstream = torch.randn(M, generator=g, dtype=torch.float64)
    got = HeadLogprobs.apply(hidden, weight, targets, temperature, torch.float64)
    # the output is float32 (as log_softmax of float32 logits); the arithmetic here float64
    want = _reference(hidden.detach(), weight.detach(), targets, temperature)
    torch.testing.assert_close(got.double(), want.double(), atol=1e-6, rtol=1e-6)
    gh, gw = torch.autograd.grad(got.double(), [hidden, weight], upstream)
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = torch.log_softmax((h2 @ w2.t()) / temperature, -1).gather(1, targets[:, None]).squeeze(1)
    rh, rw = torch.autograd.grad(ref, [h2, w2], upstream)
    torch.testing.assert_close(gh, rh, atol=1e-6, rtol=1e-6)  # the float32 softmax bounds this
    torch.testing.assert_close(gw, rw, atol=1e-6, rtol=1e-6)


def test_a_hand_computed_case():
    """Two logits [0, ln 3] (hidden [1], weight rows [0], [ln 3]): p = [1/4, 3/4], so
    log p(target 1) = ln 3/4, and d/dw1 = (1 - 3/4) * h = 1/4, d/dw0 = -1/4, d/dh = (0 - 1/4)*0 + (1 - 3/4) ln 3."""
    import math

    hidden = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]], dtype=torch.float64, requires_grad=True)
    lp = HeadLogprobs.apply(hidden, weight, torch.tensor([1]), 1.0, torch.float64)
    assert float(lp.detach()) == pytest.approx(math.log(0.75), abs=1e-7)
    lp.double().sum().backward()
    assert weight.grad.flatten().tolist() == pytest.approx([-0.25, 0.25], abs=1e-7)
    assert float(hidden.grad) == pytest.approx(0.25 * math.log(3), abs=1e-7)


def test_bf16_matmuls_match_the_unfused_bf16_head():
    """Under bf16 the logits come from the same bf16 matmul as the unfused head's, the
    softmax in float32: equal log-probs up to the float32 sum's order."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g)
    weight = torch.randn(300, 32, generator=g) * 0.2
    targets = torch.randint(0, 300, (64,), generator=g)
    got = HeadLogprobs.apply(hidden, weight, targets, 1.0, torch.bfloat16)
    want = _reference(hidden.bfloat16(), weight.bfloat16(), targets, 1.0)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)


def _tiny(cls_name: str, config_name: str, **extra):
    config = getattr(transformers, config_name)(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                num_key_value_heads=2, head_dim=8, **extra)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config)


def test_fuses_only_heads_whose_logits_are_returned_unchanged():
    """Llama and Qwen2 return lm_head(hidden) as the logits; Granite divides them by a
    logits_scaling and Gemma 2 soft-caps them, so their head is left alone."""
    assert fuses_head(_tiny("LlamaForCausalLM", "LlamaConfig"))
    assert fuses_head(_tiny("Qwen2ForCausalLM", "Qwen2Config"))
    assert not fuses_head(_tiny("GraniteForCausalLM", "GraniteConfig"))
    assert not fuses_head(_tiny("Gemma2ForCausalLM", "Gemma2Config"))


def test_fused_head_in_a_model_forward_and_restored_after():
    """Inside `fused_head` a Llama's forward returns the targets' log-probs (temperature
    applied); after it, the head's own forward is back (logits [N, L, V])."""
    model = _tiny("LlamaForCausalLM", "LlamaConfig").double()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(3))
    full = model(input_ids=ids).logits  # [2, 7, 50]
    want = torch.log_softmax(full[:, -4:].float() / 0.5, -1).gather(2, targets[..., None]).squeeze(2)
    with fused_head(model, targets, 0.5):
        got = model(input_ids=ids, logits_to_keep=4).logits  # [2, 4]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert "forward" not in vars(model.lm_head)
    assert model(input_ids=ids).logits.shape == (2, 7, 50)


def test_fused_adamw_only_for_plain_float_tensors():
    """AdamW's fused kernel takes plain float tensors on a CPU or a GPU: not integer ones,
    not an empty list (the optimizer then keeps its default)."""
    assert _fuses_adamw([torch.zeros(2, requires_grad=True)])
    assert not _fuses_adamw([])
    assert not _fuses_adamw([torch.zeros(2, dtype=torch.long)])
