"""LoRA through peft (k15rl/models/lora.py): only the adapters train, every weight sync
brings the merged adapter to the rollout engine (built-in and vLLM), checkpoints hold the
merged weights and the adapter, and a resumed LoRA run equals an uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from k15rl.config import load_config  # noqa: E402
from k15rl.distributed.placement import shares_weights, start_workers  # noqa: E402
from k15rl.errors import UserError  # noqa: E402
from k15rl.models.loading import encode_prompt, load_model, load_tokenizer, stop_token_ids  # noqa: E402
from k15rl.models.lora import ADAPTER, add_lora, policy_state_dict  # noqa: E402
from k15rl.rollout.collect import rollout  # noqa: E402
from k15rl.rollout.engine import HFEngine, SamplingParams  # noqa: E402
from k15rl.tasks import TASKS, get_task, make_prompts  # noqa: E402
from k15rl.trainer.checkpoint import latest_checkpoint  # noqa: E402
from k15rl.trainer.logprobs import collate, token_logprobs  # noqa: E402
from k15rl.trainer.loop import train  # noqa: E402
from k15rl.trainer.update import PolicyTrainer, update_plan  # noqa: E402
from k15rl.types import GenerationRequest  # noqa: E402

from test_e2e import DigitFirstTask  # noqa: E402


@pytest.mark.parametrize("override, key", [
    ("model.lora.rank=-1", "model.lora.rank"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1.0", "model.lora.dropout"),
    ("model.lora.target_modules=[]", "model.lora.target_modules"),
    ("distributed.backend=ray", "model.lora.rank"),  # not on Ray yet: one line saying so
])
def test_bad_lora_settings_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"^config key {key}: ") as e:
        load_config(None, ["model.lora.rank=4", override])
    assert "\n" not in str(e.value)


def test_unknown_target_module_names_the_key(tiny_model_dir):
    cfg = load_config(None, ["model.lora.rank=4", "model.lora.target_modules=[qkv]"])
    with pytest.raises(UserError, match=r"^config key model.lora.target_modules: .*qkv.*q_proj"):
        add_lora(load_model(tiny_model_dir), cfg.model.lora)


def test_merged_save_writes_shard_by_shard_what_save_pretrained_would(tmp_path, tiny_model_dir, monkeypatch):
    """A LoRA model's merged folder, written one shard at a time (several shards here),
    loads as the same model as the merged weights saved in one piece by save_pretrained:
    same tensors (a tied head written once), same config, same logits as the peft model."""
    from transformers import AutoModelForCausalLM

    import k15rl.models.lora as lora_mod

    cfg = load_config(None, ["model.lora.rank=4", "model.lora.alpha=8"])
    model = add_lora(load_model(tiny_model_dir), cfg.model.lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)  # B != 0: the merged weights differ from the base's
    merged = policy_state_dict(model)
    monkeypatch.setattr(lora_mod, "MERGED_SHARD_BYTES", 20_000)  # a few tensors per shard
    lora_mod.save_model(model, tmp_path / "sharded")
    model.get_base_model().save_pretrained(tmp_path / "whole", state_dict=merged)

    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2
    got = {k: v for f in files for k, v in load_file(tmp_path / "sharded" / f).items()}
    want = load_file(tmp_path / "whole" / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and torch.equal(got[k], merged[k]) for k in want)
    assert json.loads((tmp_path / "sharded" / "config.json").read_text()) == \
        json.loads((tmp_path / "whole" / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "sharded" / ADAPTER / "adapter_model.safetensors").is_file()


def _engine_follows_the_adapter(path, engine: str, tol: float, monkeypatch, overrides: tuple[str, ...] = ()) -> None:
    """One LoRA update, then the weight sync: the engine's log-probs for a fixed prompt must
    equal the trained LoRA model's and differ from the base model's. Before the sync they
    equal the base model's, for an engine with a copy of the weights; an engine sharing the
    trainer's parameters follows at once. An update that never reaches the engine (verl
    #7495, TRL #2872) fails here. Also: the optimizer holds the adapters only, the base
    weights stay bitwise."""
    cfg = load_config(None, [
        f"model.path={path}", "model.lora.rank=4", "model.lora.alpha=8", f"rollout.engine={engine}",
        "rollout.vllm.kv_cache_gb=0.25", "algorithm.lr=0.05", "algorithm.tau=0.1", "seed=0", *overrides])
    tok, model, base = load_tokenizer(path), load_model(path), load_model(path)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    optimized: list[list[torch.Tensor]] = []
    real_adamw = torch.optim.AdamW

    def recording_adamw(params, **kw):
        params = list(params)
        optimized.append(params)
        return real_adamw(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=0, stop_token_ids=stop_token_ids(tok, base))
    prompt_ids = encode_prompt(tok, (("user", "Sort: 3 1 2"),))
    with start_workers(cfg, path, model, tok, update_plan(cfg, tok.pad_token_id), max_model_len=256) as workers:
        policy = workers.trainer.current_model()

        def logprobs_of(m, seg) -> torch.Tensor:  # [T] the trainer's log-probs of the engine's tokens
            return token_logprobs(m, collate([prompt_ids], [seg.token_ids], tok.pad_token_id))[0].detach()

        # arith: a task the built-in model was not warmed up on, so the K samples of a prompt
        # differ (on level-1 sort its openings are all the same, and alternating rewards over
        # identical samples give no gradient); 8 samples of 24 tokens, since with 4 of 12 a
        # group could still open all alike (a rebuilt built-in model did, on vLLM)
        prompts = make_prompts(get_task("arith"), "train", 3, (1,), seed=0)
        trajs = rollout(workers.engine, tok, prompts, 8, params)
        assert all(len({tuple(t.response_ids) for t in trajs[g * 8:(g + 1) * 8]}) > 1 for g in range(3))
        for i, t in enumerate(trajs):  # rewards with spread inside every group
            t.reward = float(i % 2 == 0)
        workers.trainer.update(trajs, version=0, seed=0)

        # Only the adapters were optimized; the base weights did not move.
        trainable = [p for p in policy.parameters() if p.requires_grad]
        assert trainable and all(".lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
        assert len(optimized) == 1 and {id(p) for p in optimized[0]} == {id(p) for p in trainable}
        frozen = {n.replace("base_model.model.", "", 1).replace(".base_layer", ""): p
                  for n, p in policy.named_parameters() if not p.requires_grad}
        assert frozen.keys() <= base_weights.keys()
        assert all(torch.equal(p, base_weights[n]) for n, p in frozen.items())

        before_sync = workers.engine.generate([GenerationRequest(prompt_ids)], params)[0]
        # a copy is the base model until the sync; shared parameters are the policy already
        assert (torch.tensor(before_sync.logprobs) - logprobs_of(policy if workers.shared else base, before_sync)
                ).abs().max() < tol
        assert workers.shared == shares_weights(cfg)
        workers.sync_weights(1)
        seg = workers.engine.generate([GenerationRequest(prompt_ids)], params)[0]
        engine_lp = torch.tensor(seg.logprobs)  # [T]
        assert (engine_lp - logprobs_of(policy, seg)).abs().max() < tol  # the trained LoRA model
        assert (engine_lp - logprobs_of(base, seg)).abs().max() > 100 * tol  # not the base model
        merged = policy_state_dict(policy)  # what the engine loaded, in the base model's names
        assert merged.keys() == base_weights.keys()


@pytest.mark.parametrize("overrides", [(), ("rollout.overlap=true",)], ids=["shared", "copy"])
def test_hf_engine_samples_from_the_updated_adapter(tiny_model_dir, monkeypatch, overrides):
    _engine_follows_the_adapter(tiny_model_dir, "hf", 1e-4, monkeypatch, overrides)


def test_vllm_engine_samples_from_the_updated_adapter(monkeypatch):
    """Runs in `make test-vllm` (.venv-vllm); skipped where vllm is not installed."""
    pytest.importorskip("vllm")
    from k15rl.trainer.warmup import ensure_builtin

    torch.set_num_threads(1)
    _engine_follows_the_adapter(ensure_builtin(), "vllm", 1e-4, monkeypatch)  # float32, as tests/test_vllm_engine.py


def test_activation_checkpointing_leaves_the_lora_update_unchanged(tiny_model_dir, monkeypatch):
    """benchmarks/lora.py runs both arms with algorithm.activation_checkpointing: on a peft
    model (frozen inputs, non-reentrant) the update must be the one without it. Both arms
    on plain passes (checkpointing turns the shared-prompt passes off), so that only the
    checkpointing differs."""
    import k15rl.trainer.update as update_mod

    monkeypatch.setattr(update_mod, "shares_prompts", lambda model: False)
    tok = load_tokenizer(tiny_model_dir)
    prompts = make_prompts(get_task("sort"), "train", 3, (1,), seed=0)
    params = SamplingParams(max_new_tokens=12, seed=0)
    trajs = rollout(HFEngine(load_model(tiny_model_dir), tok), tok, prompts, 4, params)
    for i, t in enumerate(trajs):
        t.reward = float(i % 2 == 0)
    weights = []
    for checkpointing in ("false", "true"):
        cfg = load_config(None, ["model.lora.rank=4", "algorithm.lr=0.05", "algorithm.micro_batch=5",
                                 f"algorithm.activation_checkpointing={checkpointing}"])
        torch.manual_seed(0)  # the same initial A
        model = add_lora(load_model(tiny_model_dir), cfg.model.lora)
        trainer = PolicyTrainer(model, update_plan(cfg, tok.pad_token_id))
        trainer.update(trajs, version=0, seed=0)
        weights.append(trainer.weights())
    assert not torch.equal(weights[0]["model.layers.0.self_attn.q_proj.weight"],
                           load_model(tiny_model_dir).state_dict()["model.layers.0.self_attn.q_proj.weight"])
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-6, rtol=1e-5)


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "digit_first", DigitFirstTask)


def _cfg(out, model, *extra):
    return load_config(None, [
        f"out={out}", f"model.path={model}", "model.lora.rank=4", "model.lora.alpha=8",
        "model.lora.target_modules=[q_proj,v_proj,down_proj]", "data.tasks=[digit_first]", "data.train_per_level=20",
        "data.test_per_level=4", "iterations=4", "rollout.k=8", "rollout.prompts_per_iteration=4",
        "rollout.max_new_tokens=6", "rollout.segment_tokens=3", "algorithm.lr=0.05", "algorithm.tau=0.01",
        "eval.every=2", "threads=1", "checkpoint_every=1", "checkpoint_keep=2", *extra,
    ])


def test_lora_run_saves_merged_and_adapter_and_resumes_exactly(tmp_path, tiny_model_dir, toy_task, crash_then_resume):
    from transformers import AutoModelForCausalLM

    ref = tmp_path / "ref"
    train(_cfg(ref, tiny_model_dir), log=lambda s: None)

    # final/: an ordinary HF folder of merged weights; adapter/ the adapter alone
    final = ref / "final"
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    cfg = _cfg(ref, tiny_model_dir)
    lora = add_lora(load_model(tiny_model_dir), cfg.model.lora, final / ADAPTER)
    ids = torch.tensor([[5, 9, 17, 33, 2, 40, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, lora(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert (merged(ids).logits - load_model(tiny_model_dir)(ids).logits).abs().max() > 1e-3  # it trained
    base, got = load_file(tiny_model_dir / "model.safetensors"), load_file(final / "model.safetensors")
    assert got.keys() == base.keys()
    assert torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not a target
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    card = (final / "README.md").read_text()
    assert "| LoRA rank | 4 |" in card and "q_proj, v_proj, down_proj" in card and "- lora" in card
    adapter_cfg = json.loads((final / ADAPTER / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8

    # killed after the rollout of iteration 3, resumed from iter_000002
    run = tmp_path / "run"

    def died_after_iteration_2():
        assert latest_checkpoint(run).name == "iter_000002"
        assert (latest_checkpoint(run) / ADAPTER / "adapter_model.safetensors").is_file()

    summary = crash_then_resume(_cfg(run, tiny_model_dir), 3, died_after_iteration_2)
    assert summary["resumed_from"].endswith("iter_000002")
    for name in ("model.safetensors", f"{ADAPTER}/adapter_model.safetensors"):
        a, b = load_file(ref / "final" / name), load_file(run / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, run)]
    strip = [[{k: v for k, v in m.items() if not k.startswith(("time/", "rollout/tokens_per_s"))} for m in r]
             for r in rows]
    assert strip[0] == strip[1]


def test_resuming_a_full_run_with_lora_is_refused(tmp_path, tiny_model_dir, toy_task):
    out = tmp_path / "full"
    train(_cfg(out, tiny_model_dir, "model.lora.rank=0", "iterations=1"), log=lambda s: None)
    with pytest.raises(UserError, match=r"^config key model.lora.rank: .*holds no LoRA adapter"):
        train(_cfg(out, tiny_model_dir, "iterations=2"), resume=True, log=lambda s: None)
