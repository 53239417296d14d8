"""Sharded training with FSDP2 (report §2.6): two gloo processes on CPU take the same
optimizer steps, with the same loss and metrics, as one process.

One `torchrun` launch (2 ranks, this file as the script) runs every sharded case and
saves what each rank saw; the tests compare it with single-process runs done here.
docs/sharded_training.md records the measured differences.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from functools import partial

import torch

from k15rl.algorithms import LOSSES
from k15rl.distributed.shard import ONE_RANK, Shard
from k15rl.config import AlgorithmConfig
from k15rl.trainer.update import PolicyTrainer, UpdatePlan
from k15rl.types import Prompt, Trajectory

WORLD = 2
# float32 on CPU, lr 1e-3. Ranks pad their rows differently from one process, so sums
# round differently: gradients differ by float32 noise, which AdamW's first step
# (about lr * g / |g|) magnifies where a gradient is near 0. Measured max differences
# in docs/sharded_training.md; one process with micro_batch=1 instead of 64 differs
# from itself by as much (up to 5.8e-7 in the weights).
ATOL = 2e-6  # weights after the update
GRAD_ATOL = 1e-6  # the last step's clipped gradients
TIMEOUT_S = 150  # the whole torchrun launch (about 12 s here)

# name -> (loss, loss keywords, AlgorithmConfig fields and train_on_stale). 7 rows: rank 0 gets 4, rank 1 gets 3.
CASES = {
    "seq": ("k15", {"tau": 0.1, "normalization": "sequence"}, {"micro_batch": 64, "train_on_stale": False}),
    "token": ("k15", {"tau": 0.1, "normalization": "token"}, {"micro_batch": 64}),
    "seq_micro1": ("k15", {"tau": 0.1, "normalization": "sequence"}, {"micro_batch": 1}),  # rank 1: a dummy pass
    "token_micro2": ("k15", {"tau": 0.1, "normalization": "token"}, {"micro_batch": 2, "train_on_stale": False}),
    "grpo_micro3": ("grpo", {}, {"micro_batch": 3}),
    # N=1 < world: rank 1 has no rows, in the recomputed (stale) log-probs and in the step
    "one_row": ("k15", {"tau": 0.1, "normalization": "sequence"}, {}),
    "steps4": ("k15", {"tau": 0.1, "normalization": "token"}, {"micro_batch": 2, "minibatches": 2, "epochs": 2}),
    # micro-batches by token count: the ranks' pass counts differ (padded to the larger)
    "tokens12": ("k15", {"tau": 0.1, "normalization": "token"}, {"micro_batch_tokens": 12}),
    "ckpt_tokens20": ("k15", {"tau": 0.1, "normalization": "sequence"},
                      {"micro_batch_tokens": 20, "activation_checkpointing": True}),
    # one micro-batch as several length passes (no per-pass cost: split wherever it saves
    # padding), every pass keeping its graph for one backward: the ranks' pass counts differ
    "seq_split": ("k15", {"tau": 0.1, "normalization": "sequence"}, {"micro_batch": 64}),
}


def tiny_model(seed: int = 0):
    """A random 2-layer Llama (hidden 32, vocab 64, tied embeddings like the built-in model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config)


def fake_trajectories(case: str) -> list[Trajectory]:
    """7 rows in groups of 3, 1 and 3, responses of 1 to 9 tokens; rows 1 and 4 begin with
    3 tokens sampled by policy version 0 (stale when updating version 1)."""
    rng = random.Random(1)
    groups, rewards = [7, 7, 7, 8, 9, 9, 9], [1.0, 0.0, 0.0, 1.0, 0.3, 1.0, 0.0]
    out = []
    for i, (g, r) in enumerate(zip(groups, rewards)):
        n = rng.randint(1, 9) if i != 4 else 9
        out.append(Trajectory(
            prompt=Prompt(id=f"p{g}", messages=(("user", "q"),), answer="a", task="fake"),
            group=g,
            prompt_ids=[rng.randint(1, 63) for _ in range(rng.randint(2, 5))],
            response_ids=[rng.randint(1, 63) for _ in range(n)],
            logprobs=[rng.uniform(-5.0, -3.0) for _ in range(n)],
            finish_reason="stop",
            reward=r,
            versions=[0] * min(3, n) + [1] * (n - 3) if i in (1, 4) else [],
        ))
    return out[1:2] if case == "one_row" else out


def run_case(case: str, shard: Shard | None = None):
    """One `PolicyTrainer.update` (version 1) of a fresh tiny model: (model, metrics)."""
    from k15rl.distributed.shard import shard_model

    loss, kw, fields = CASES[case]
    model = tiny_model()
    if shard is not None:
        model = shard_model(model, shard)
    fields = dict(fields)
    train_on_stale = fields.pop("train_on_stale", True)
    plan = UpdatePlan(partial(LOSSES[loss], **kw), AlgorithmConfig(lr=1e-3, **fields), 1.0, train_on_stale, pad_id=0)
    import k15rl.trainer.update as update

    pass_tokens = update.PASS_TOKENS
    update.PASS_TOKENS = 0 if case.endswith("_split") else pass_tokens
    try:
        metrics = PolicyTrainer(model, plan, shard or ONE_RANK).update(fake_trajectories(case), version=1, seed=3)
    finally:
        update.PASS_TOKENS = pass_tokens
    return model, metrics


# Hand-checked loss (k15, tau = 1, old log-probs 0, so the l2 term is (1/2) logp^2):
# rows 0, 1 in group 0 with rewards 1, 0 (A = +0.5, -0.5); row 2 alone in group 1 (A = 0).
#   row 0: logp [-1, -1], S = -2:  sequence term -A*S + S^2/2 = 1 + 2 = 3;  tokens: 2 x (0.5 + 0.5) = 2
#   row 1: logp [-1],     S = -1:  -0.5 + 0.5 = 0;                          tokens: 0
#   row 2: logp [-0.5],   S = -0.5: 0 + 0.125;                              tokens: 0.125
# sequence: (3 + 0 + 0.125) / 3 rows = 1.0416667;  token: (2 + 0 + 0.125) / 4 tokens = 0.53125.
# With 2 ranks, rank 0 holds rows 0 and 2 (T_local = 2), rank 1 row 1 (T_local = 1).
HAND_LOGP = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-0.5, 0.0]])
HAND_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
HAND_REWARDS, HAND_GROUPS = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1])
HAND_LOSS = {"sequence": 3.125 / 3, "token": 2.125 / 4}


def random_loss_inputs():
    """7 rows, uneven lengths, groups of 4 and 3: (logp, old, rewards, mask, groups)."""
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([3, 7, 1, 5, 2, 6, 4])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()  # [7, 7]
    logp = -torch.rand(7, 7, generator=g) * 3 * mask
    old = -torch.rand(7, 7, generator=g) * 3 * mask
    return logp, old, torch.tensor([1.0, 0, 0, 1, 1, 0, 1]), mask, torch.tensor([0, 0, 0, 0, 1, 1, 1])


def _local_rows(full: torch.Tensor, mask: torch.Tensor, shard: Shard) -> torch.Tensor:
    """This rank's rows of `full`, trimmed to their own longest length (uneven T_local)."""
    rows = shard.rows(full.shape[0])
    T = int(mask[rows].sum(1).max()) if rows else 0
    return full[rows, :T]


def _sharded_loss(inputs, tau: float, norm: str, shard: Shard):
    """What a rank computes: its rows' log-probs, gathered, loss on the full batch;
    returns the loss and the gradient w.r.t. its own rows."""
    logp, old, rewards, mask, groups = inputs
    full = shard.gather(_local_rows(logp, mask, shard), logp.shape[0]).requires_grad_(True)  # [N, T]
    loss, _ = LOSSES["k15"](full, old, rewards, mask, groups, tau=tau, normalization=norm)
    loss.backward()
    return float(loss), full.grad[shard.rows(logp.shape[0])]


def _worker(out_dir: Path) -> None:
    """Run by torchrun on each rank: every sharded case, saved to rank<r>.pt."""
    import torch.distributed as dist

    from k15rl.distributed.shard import full_state_dict, shard_from_env

    shard = shard_from_env()
    try:
        res: dict = {"gather": {}, "loss": {}, "update": {}}
        for n, widths in ((1, (3, 0)), (5, (2, 4)), (2, (1, 6))):  # n < world, uneven T
            rows = shard.rows(n)
            local = torch.tensor([[100.0 * i + t + 1 for t in range(widths[shard.rank])] for i in rows])
            res["gather"][n] = shard.gather(local.reshape(len(rows), widths[shard.rank]), n)
        hand = (HAND_LOGP, torch.zeros(3, 2), HAND_REWARDS, HAND_MASK, HAND_GROUPS)
        for name, inputs, tau in (("hand", hand, 1.0), ("random", random_loss_inputs(), 0.3)):
            for norm in ("sequence", "token"):
                res["loss"][name, norm] = _sharded_loss(inputs, tau, norm, shard)
        probe = torch.tensor([[5, 9, 13, 2, 40, 41, 7]])
        for case in CASES:
            model, metrics = run_case(case, shard)
            with torch.no_grad():
                logits = model(input_ids=probe).logits
            res["update"][case] = {
                "metrics": metrics,
                "state": full_state_dict(model, shard),
                "local": {k: v.to_local().clone() for k, v in model.state_dict().items()},
                "grad": {k: p.grad.full_tensor() for k, p in model.named_parameters()},  # the last step's, clipped
                "logits": logits,
            }
        torch.save(res, out_dir / f"rank{shard.rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Launch this file under torchrun (2 CPU processes, gloo); each rank's results."""
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), __file__, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its ranks (each in its own session) on SIGTERM
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# 4. Shard.rows and Shard.gather


def test_rows_split_every_row_once_evenly():
    for n in range(12):
        for world in (1, 2, 3, 4):
            counts = [len(Shard(r, world).rows(n)) for r in range(world)]
            assert sorted(i for r in range(world) for i in Shard(r, world).rows(n)) == list(range(n))
            assert max(counts) == Shard(0, world).max_rows(n) and max(counts) - min(counts) <= 1
    assert Shard(1, 2).rows(1) == [] and Shard(0, 2).rows(1) == [0]


def test_gather_single_process_is_identity():
    x = torch.arange(6.0).reshape(3, 2)
    assert Shard(0, 1).gather(x, 3) is x
    with pytest.raises(ValueError):
        Shard(0, 1).gather(x, 4)


def test_gather_restores_batch_order_and_pads(ranks):
    for n, widths in ((1, (3, 0)), (5, (2, 4)), (2, (1, 6))):
        want = torch.zeros(n, max(widths))  # padded to the widest rank
        for i in range(n):
            w = widths[i % WORLD]
            want[i, :w] = torch.tensor([100.0 * i + t + 1 for t in range(w)])
        for res in ranks:
            torch.testing.assert_close(res["gather"][n], want, rtol=0, atol=0)


# 2. The loss on the gathered batch is the single-process loss


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_sharded_loss_equals_hand_computed_value(ranks, norm):
    for res in ranks:
        assert res["loss"]["hand", norm][0] == pytest.approx(HAND_LOSS[norm], abs=1e-7)


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_sharded_loss_and_row_gradients_equal_single_process(ranks, norm):
    logp, old, rewards, mask, groups = random_loss_inputs()
    logp.requires_grad_(True)
    loss, _ = LOSSES["k15"](logp, old, rewards, mask, groups, tau=0.3, normalization=norm)
    loss.backward()
    for r, res in enumerate(ranks):
        value, grad = res["loss"]["random", norm]
        assert value == loss.item()  # bitwise: the gathered tensor is the batch itself
        torch.testing.assert_close(grad, logp.grad[Shard(r, WORLD).rows(7)], rtol=0, atol=0)


# 1. One optimizer step: sharded == single process; 3. full_state_dict


@pytest.fixture(scope="module")
def single() -> dict:
    """The single-process runs of every case: (state dict, metrics, last step's gradients)."""
    out = {}
    for case in CASES:
        model, metrics = run_case(case)
        out[case] = (model.state_dict(), metrics, {k: p.grad for k, p in model.named_parameters()})
    return out


def max_param_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in b)


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_step_equals_single_process_step(ranks, single, case):
    state, metrics, grads = single[case]
    got = ranks[0]["update"][case]
    assert got["state"].keys() == state.keys()
    diff, grad_diff = max_param_diff(got["state"], state), max_param_diff(got["grad"], grads)
    print(f"{case}: max |param diff| {diff:.2g}, max |grad diff| {grad_diff:.2g}, "
          f"grad_norm {got['metrics']['train/grad_norm']:.7g} vs {metrics['train/grad_norm']:.7g}")
    assert diff <= ATOL and grad_diff <= GRAD_ATOL, (diff, grad_diff)
    assert max_param_diff(got["state"], tiny_model().state_dict()) > 1e-4  # the step did move the weights
    assert got["metrics"].keys() == metrics.keys()
    for k, v in metrics.items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert ranks[1]["update"][case]["metrics"] == got["metrics"]  # identical on every rank
    assert ranks[1]["update"][case]["state"] is None


@pytest.mark.parametrize("case", ["seq", "seq_micro1"])
def test_full_state_dict_is_the_sharded_model(ranks, case):
    full = ranks[0]["update"][case]["state"]
    for k, v in full.items():  # FSDP2 shards dim 0 like torch.chunk; rank 0's state holds the whole
        local = torch.cat([res["update"][case]["local"][k] for res in ranks])
        torch.testing.assert_close(local, v, rtol=0, atol=0)
    model = tiny_model(seed=1)
    model.load_state_dict(full, strict=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 9, 13, 2, 40, 41, 7]])).logits
    for res in ranks:  # the unsharded copy computes what the sharded model computed
        torch.testing.assert_close(logits, res["update"][case]["logits"], rtol=0, atol=1e-6)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


def test_split_case_runs_several_length_passes_on_every_rank():
    """The `seq_split` case really keeps several graphs per rank (what it is there to test)."""
    from k15rl.trainer.update import length_passes, make_train_batch

    tokens = make_train_batch(fake_trajectories("seq_split"), pad_id=0).tokens
    for r in range(WORLD):
        assert len([p for p in length_passes(tokens, Shard(r, WORLD), pass_tokens=0) if p]) > 1
