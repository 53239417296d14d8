"""Any Hugging Face VLM with the same code (report §2.3.5): a tiny random Qwen2-VL, built from
configs offline, whose language model takes multi-row rotary position ids (M-RoPE: a
temporal, a height and a width row), whose tower cuts each image into its own number of
patches (image_grid_thw) and whose processor expands each image into a number of tokens
that depends on the image's size."""

import io
from dataclasses import replace

import pytest
import torch

from k15rl.models.loading import encode_prompt, load_model, load_tokenizer
from k15rl.models.vision import IMAGE_TOKEN, to_png
from k15rl.rollout.collect import partial_rollout, rollout
from k15rl.rollout.engine import HFEngine, SamplingParams
from k15rl.rollout.replay import ReplayBuffer
from k15rl.tasks import get_task, make_prompts
from k15rl.trainer.logprobs import token_logprobs
from k15rl.trainer.update import LogprobPasses, make_train_batch

TEMPLATE = (  # Qwen2-VL's chat layout, image parts as <|vision_start|><|image_pad|><|vision_end|>
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def image_only_processor_class():
    """Qwen2VLProcessor without its video processor, registered for AutoProcessor: transformers
    builds a video processor only with torchvision, which does not install beside this
    project's CPU torch. Images go through Qwen2VLProcessor's own code unchanged."""
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    AutoProcessor.register(Qwen2VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
    return ImageOnlyQwen2VLProcessor


def build_qwen2vl(path, hidden_size=32, mrope_section=(4, 2, 2), video_processor=False):
    """A random Qwen2-VL (2 text layers `hidden_size` wide in 2 heads, a 1-block tower on
    4-pixel patches merged 2x2) with its processor, saved as an ordinary Hugging Face
    folder. `video_processor`: the model's own processor (needs torchvision), else
    `image_only_processor_class`'s."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from k15rl.models.builtin import build_tokenizer

    corpus = [p.question + "\n" + p.answer for name in ("vis_count", "vis_bars", "arith")
              for p in make_prompts(get_task(name), "train", 40, (1, 2), seed=0)]
    tok = build_tokenizer(corpus, 320)
    tok.add_special_tokens({"extra_special_tokens": SPECIAL}, replace_extra_special_tokens=False)
    tok.chat_template = TEMPLATE
    # 8..48-pixel sides (multiples of patch 4 x merge 2): a 96x96 task image becomes 48x48
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8,
                                      max_pixels=48 * 48, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if video_processor:
        from transformers import Qwen2VLVideoProcessor

        processor = Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                     chat_template=TEMPLATE)
    else:
        processor = image_only_processor_class()(image_processor=images, tokenizer=tok, chat_template=TEMPLATE)
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": list(mrope_section)},
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, initializer_range=0.2),
        vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=hidden_size, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3, initializer_range=0.2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )  # initializer_range 0.2: logits far from uniform, so positions and pixels visibly matter
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """`build_qwen2vl`'s model: text layers 32 wide, the image-only processor."""
    return build_qwen2vl(tmp_path_factory.mktemp("qwen2vl"))


def _resized(png: bytes, size: tuple[int, int]) -> bytes:
    from PIL import Image

    return to_png(Image.open(io.BytesIO(png)).convert("RGB").resize(size))


def prompts_of_many_sizes():
    """Visual prompts whose images have different sizes (so different token counts and
    grids), one with two images, and a text-only prompt."""
    vis = make_prompts(get_task("vis_count"), "test", 3, (1, 2), seed=0)
    a = replace(vis[0], meta={**vis[0].meta, "images": (_resized(vis[0].images[0], (40, 24)),)})
    b = replace(vis[1], meta={**vis[1].meta, "images": (_resized(vis[1].images[0], (16, 48)),)})
    two = replace(vis[2], messages=(("user", f"{IMAGE_TOKEN} and {IMAGE_TOKEN}: " + vis[2].question.replace(
        IMAGE_TOKEN, "")),), meta={**vis[2].meta, "images": (vis[2].images[0], _resized(vis[0].images[0], (24, 24)))})
    text = make_prompts(get_task("arith"), "test", 1, (1,), seed=0)[0]
    return [a, b, two, text]


def test_processor_expands_each_image_by_its_size(qwen_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert type(AutoModelForImageTextToText.from_pretrained(qwen_dir)).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(qwen_dir)).__name__ == "ImageOnlyQwen2VLProcessor"
    tok = load_tokenizer(qwen_dir)
    a, b, two, _ = prompts_of_many_sizes()
    pad = tok.image_token_id
    # 40x24 -> 40x24 (multiples of 8): a 6x10 patch grid, merged 2x2: 15 tokens; 16x48: 4x12 -> 12
    assert encode_prompt(tok, a.messages, a.images).count(pad) == 15
    assert encode_prompt(tok, b.messages, b.images).count(pad) == 12
    ids = encode_prompt(tok, two.messages, two.images)
    assert ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 2
    assert ids.count(pad) == 12 * 12 // 4 + 6 * 6 // 4  # 96x96 -> 48x48 (max_pixels), 24x24
    grids = tok.image_inputs(two.images).grid_thw
    assert grids.tolist() == [[1, 12, 12], [1, 6, 6]]


def test_engine_logprobs_equal_trainer_logprobs_with_mrope(qwen_dir):
    """Prefill with image features and 3-row positions, decoding at position + offset: the
    engine's log-probs are the trainer's (one pass, micro-batches) for images of any size."""
    model, tok = load_model(qwen_dir), load_tokenizer(qwen_dir)
    trajs = rollout(HFEngine(model, tok, max_batch=5), tok, prompts_of_many_sizes(), 3,
                    SamplingParams(max_new_tokens=10, seed=1, stop_token_ids=[tok.eos_token_id]))
    batch = make_train_batch(trajs, tok.pad_token_id, tokenizer=tok)
    assert batch.tokens.images.grid_thw.shape == (4, 3)  # 4 distinct images, each shared by 3 samples
    assert len(batch.tokens.image_index) == 3 * 4
    with torch.no_grad():
        whole = token_logprobs(model, batch.tokens)  # [N, T]
        parts = LogprobPasses(model, batch.tokens, 5, 1.0, False, grad=False).logprobs()  # [N, T]
    mask = batch.tokens.response_mask.bool()
    assert torch.allclose(whole[mask], batch.old_logprobs[mask], atol=1e-5)
    assert torch.allclose(parts[mask], batch.old_logprobs[mask], atol=1e-5)
    # the positions matter: plain 1-row positions give other log-probs for the image rows
    from k15rl.models.vision import embed_with_images, image_features

    tk = batch.tokens
    with torch.no_grad():
        features = image_features(model, tk.images)
        embeds = embed_with_images(model, tk.input_ids, [features[u] for u in tk.image_index.tolist()], tk.image_mask)
        flat = model(inputs_embeds=embeds, attention_mask=tk.attention_mask,
                     position_ids=(tk.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
    rows = torch.arange(len(tk))[:, None]
    flat_lp = torch.log_softmax(flat[rows, tk.gather_idx].float(), -1).gather(2, tk.response_ids[..., None])[..., 0]
    assert (flat_lp[mask] - batch.old_logprobs[mask]).abs().max() > 1e-3


def test_partial_rollouts_continue_at_their_mrope_positions(qwen_dir):
    """Segments cut at 3 tokens and continued: the prefix re-encoded with its images decodes at
    the positions an uncut response has."""
    model, tok = load_model(qwen_dir), load_tokenizer(qwen_dir)
    engine, buf = HFEngine(model, tok, max_batch=4), ReplayBuffer()
    params = SamplingParams(max_new_tokens=9, seed=2, stop_token_ids=[tok.eos_token_id])
    trajs, group, it = [], 0, 0
    prompts = prompts_of_many_sizes()[:3]
    while len(trajs) < 6 and it < 10:
        res = partial_rollout(engine, tok, buf, prompts if it == 0 else [], 2, params, version=0,
                              segment_tokens=3, max_tokens=9, first_group=group)
        trajs += res.trajectories
        group, it = res.next_group, it + 1
    assert len(trajs) == 6 and any(t.num_tokens > 3 for t in trajs)
    batch = make_train_batch(trajs, tok.pad_token_id, tokenizer=tok)
    with torch.no_grad():
        lp = token_logprobs(model, batch.tokens)
    mask = batch.tokens.response_mask.bool()
    assert torch.allclose(lp[mask], batch.old_logprobs[mask], atol=1e-5)


def test_one_rl_iteration_on_qwen2vl(qwen_dir, tmp_path):
    """The training run, unchanged, on the Qwen2-VL folder: visual and text tasks, a
    checkpoint that loads back as a Qwen2-VL with its processor."""
    import json

    from k15rl.api import train

    out = tmp_path / "run"
    train("demo", f"model.path={qwen_dir}", f"out={out}", "data.tasks=[vis_count,vis_bars,arith]",
          "data.train_levels=[1,2]", "data.test_levels=[1]", "data.train_per_level=6", "data.test_per_level=2",
          "iterations=1", "rollout.k=2", "rollout.prompts_per_iteration=3", "rollout.max_new_tokens=6",
          "eval.every=1", "algorithm.minibatches=1", overwrite=True, log=lambda s: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "reward/mean" in r]
    assert len(trained) == 1 and {"reward/accuracy/vis_count", "reward/accuracy/arith"} & set(trained[0])
    # the engine's log-probs and the update's agree in the run itself (M-RoPE on both sides)
    assert trained[0]["rollout/logprob_gap_max"] < 1e-4
    assert type(load_model(out / "final")).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(load_tokenizer(out / "final").processor).__name__ == "ImageOnlyQwen2VLProcessor"
