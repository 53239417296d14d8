"""LoRA through peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation"): the update of each
target weight is W + (alpha / r) B A with A [r, in], B [out, r]; only A and B are trained.

    model = add_lora(model, cfg.model.lora)         # in place: only the adapters require grad
    state = policy_state_dict(model)                # merged weights in the base model's names:
                                                    # what the engines' load_weights takes
    save_model(model, folder)                       # merged HF files + folder/adapter (peft's format)
    model = add_lora(base, cfg.model.lora, folder / ADAPTER)   # resume: the adapter exactly

An engine with a copy of the weights (Ray, vLLM, overlapped rollouts) never sees peft: it
serves a plain model and receives the merged state dict every weight sync, exactly as with
full fine-tuning (a sync that forgot the adapters would leave the engine on the base
weights; tests/test_lora.py checks it cannot). The local built-in engine shares the
trainer's parameters (`served_module`): the LoRA layers themselves, nothing to sync.
peft is imported lazily, here only (pip install 'k15rl[lora]').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k15rl.errors import UserError

ADAPTER = "adapter"  # the adapter's folder inside a model folder k15rl writes (checkpoints, final/)
ADAPTER_NAME = "default"  # peft's name of the one adapter


@dataclass(frozen=True)
class LoraResume:
    """Where a resumed LoRA run's trainer starts: the base model's folder (its weights stay
    frozen) and the checkpoint's adapter folder."""

    base: Path
    adapter: Path


def is_lora(model: Any) -> bool:
    """True for a peft model (without importing peft)."""
    return hasattr(model, "peft_config")


def check_installed() -> None:
    """UserError unless peft can be imported (checked before a run touches its folder)."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UserError("config key model.lora.rank: LoRA needs peft (pip install 'k15rl[lora]')")


def resume_from(checkpoint: Path, base: Path) -> LoraResume:
    """A LoRA run's resume from `checkpoint` on the base model folder `base`; UserError
    when the checkpoint holds no adapter (a model.lora.rank=0 run)."""
    adapter = Path(checkpoint) / ADAPTER
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"config key model.lora.rank: {checkpoint} holds no LoRA adapter ({ADAPTER}/): the run "
                        f"was not a LoRA run; resume it with model.lora.rank=0")
    return LoraResume(Path(base), adapter)


def add_lora(model, cfg, adapter: str | Path | None = None):
    """`model` with LoRA adapters on the modules `cfg.target_modules` names (a `LoraConfig`
    of k15rl.config), wrapped in place by peft: the base weights are frozen, only the
    adapters require grad. B starts at zero, so the policy starts as the base model;
    `adapter`: a folder peft's `save_pretrained` wrote, whose weights are loaded exactly."""
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    except ImportError:
        raise UserError("config key model.lora.rank: LoRA needs peft (pip install 'k15rl[lora]')") from None
    targets = set(cfg.target_modules)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if not targets & names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise UserError(f"config key model.lora.target_modules: no module of the model is named "
                        f"{', '.join(sorted(targets))} (its linear layers: {', '.join(linear)})")
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=sorted(targets & names), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_cfg)
    if adapter is not None:
        from safetensors.torch import load_file

        path = Path(adapter) / "adapter_model.safetensors"
        result = set_peft_model_state_dict(model, load_file(path))
        missing = [k for k in result.missing_keys if ".lora_" in k]
        if missing or result.unexpected_keys:
            raise UserError(f"{path} does not fit model.lora (missing {missing[:3]}, unexpected "
                            f"{list(result.unexpected_keys)[:3]}): resume with the run's own model.lora settings")
    model.eval()
    return model


def served_module(model):
    """The module an engine that shares the trainer's parameters generates with: for a peft
    model its base model, whose target layers peft has replaced in place by LoRA layers
    (W x + (alpha / r) B A x, the adapters of the trainer itself); a plain model as it is."""
    return model.get_base_model() if is_lora(model) else model


def policy_state_dict(model) -> dict:
    """The policy's weights in the base model's key names, as the engines load them: for a
    peft model the target weights merged, W + (alpha / r) B A (computed in float32, rounded
    once to W's dtype), the adapters' own tensors left out; a plain model's `state_dict()`."""
    if not is_lora(model):
        return model.state_dict()
    return {k: _merged(t, layer) for k, (t, layer) in _policy_plan(model).items()}


def _policy_plan(model) -> dict:
    """The policy's key names -> (the base model's tensor, the LoRA layer whose update it
    takes, or None): the merged tensor has the base tensor's shape and dtype."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    inside = tuple(f"{n}." for n in layers)
    plan = {k: (v, None) for k, v in base.state_dict().items() if not k.startswith(inside)}
    for n, m in layers.items():
        plan[f"{n}.weight"] = (m.base_layer.weight, m)
        if getattr(m.base_layer, "bias", None) is not None:
            plan[f"{n}.bias"] = (m.base_layer.bias, None)
    return plan


def _merged(tensor, layer):
    """`tensor` detached, plus `layer`'s adapter update when a layer is given (W + (alpha / r)
    B A in float32, rounded once to W's dtype)."""
    import torch

    if layer is None:
        return tensor.detach()
    with torch.no_grad():
        return (tensor.float() + layer.get_delta_weight(ADAPTER_NAME).float()).to(tensor.dtype)


# The merged weights are written this many bytes at a time: a LoRA run's peak memory is its
# update's, not a save that held a merged copy of every target weight and the file's bytes.
MERGED_SHARD_BYTES = 100 << 20


def _save_merged(model, folder: Path) -> None:
    """The merged weights as a Hugging Face folder (config, safetensors shards of at most
    MERGED_SHARD_BYTES with their index when there are several), one shard merged and
    written at a time. `save_pretrained(state_dict=...)` needs every merged tensor at once
    (a second copy of all target weights) and then serializes whole files in memory;
    huggingface_hub plans the shards and safetensors writes each, as save_pretrained does.
    Tensors that share storage (tied embeddings) are written once, under their first name,
    and tied again on load, as save_pretrained leaves them."""
    import json

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    base = model.get_base_model()
    plan, seen = {}, set()
    for k, (t, layer) in _policy_plan(model).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if layer is None and key in seen:
            continue
        seen.add(key)
        plan[k] = (t, layer)
    split = split_torch_state_dict_into_shards({k: t for k, (t, _) in plan.items()},
                                               max_shard_size=MERGED_SHARD_BYTES)
    for filename, names in split.filename_to_tensors.items():
        shard = {k: _merged(*plan[k]).contiguous() for k in names}
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = base.config
    config.architectures = [type(base).__name__]
    config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None and base.can_generate():
        base.generation_config.save_pretrained(folder)


def save_model(model, folder: str | Path) -> None:
    """`model.save_pretrained(folder)`; for a peft model the merged weights as an ordinary
    Hugging Face folder (what `AutoModelForCausalLM.from_pretrained` and the engines load),
    written shard by shard (`_save_merged`), plus the adapter alone in folder/adapter
    (peft's files; what a resumed run trains on)."""
    folder = Path(folder)
    if not is_lora(model):
        model.save_pretrained(folder, safe_serialization=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    _save_merged(model, folder)
    model.save_pretrained(folder / ADAPTER, safe_serialization=True)
