"""Vision-language models: the built-in tiny VLM and the tokenizer side of images (report §2.3.5).

A prompt's images travel as PNG bytes (`Prompt.meta["images"]`, `GenerationRequest.images`):
plain data that crosses a process or Ray boundary and hashes to a stable cache key. Its text
holds one `<image>` placeholder per image (verl's layout). `VisionTokenizer` is the model's
tokenizer plus its `AutoProcessor`: everything text-only code asks of a tokenizer goes to
the tokenizer, and the two things images need go to the processor: expanding each
placeholder into the model's image tokens (`encode_chat`) and pixel values (`pixel_values`).

The built-in VLM is LLaVA-shaped (transformers' `LlavaForConditionalGeneration`: a CLIP
vision tower, a two-layer projector, a Llama language model), the architecture both
transformers and vLLM serve, built from configs offline and saved as an ordinary Hugging
Face folder (`AutoModelForImageTextToText` and `AutoProcessor` load it).
"""

from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from k15rl.errors import UserError

if TYPE_CHECKING:
    import torch

IMAGE_TOKEN = "<image>"
# Chat template of the built-in VLM: the built-in text template, with list contents
# ({"type": "image"} / {"type": "text"} parts, TRL's layout) rendered as `<image>` and text.
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # one image's encoded size; larger is refused (bad input)
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass
class VisionSpec:
    """The vision half of the built-in VLM: a CLIP tower on `image_size` square images cut
    into `patch_size` patches ((image_size / patch_size)^2 image tokens per image)."""

    image_size: int = 96
    patch_size: int = 12
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class ImageInputs:
    """The image processor's output for I images, in order. Fixed-size towers (LLaVA):
    pixel_values [I, 3, H, W], grid_thw None. Qwen2-VL-style towers cut each image into its
    own number of patches: pixel_values [sum_i t_i*h_i*w_i, D] (image i's patches in a run)
    and grid_thw [I, 3] (its temporal, height and width patch counts)."""

    pixel_values: "torch.Tensor"
    grid_thw: "torch.Tensor | None" = None

    def __len__(self) -> int:
        return len(self.pixel_values) if self.grid_thw is None else len(self.grid_thw)

    def take(self, idx: Sequence[int]) -> "ImageInputs":
        """Images `idx` (in that order)."""
        import torch

        idx = list(idx)
        if self.grid_thw is None:
            return ImageInputs(self.pixel_values[idx])
        sizes = self.grid_thw.prod(-1).tolist()  # patches per image
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        rows = torch.cat([self.pixel_values[starts[i]:starts[i] + sizes[i]] for i in idx])  # [patches, D]
        return ImageInputs(rows, self.grid_thw[idx])

    def to(self, device) -> "ImageInputs":
        return ImageInputs(self.pixel_values.to(device), None if self.grid_thw is None else self.grid_thw.to(device))

    def model_kwargs(self) -> dict:
        """The keyword arguments of the model's `get_image_features` / forward."""
        return {"pixel_values": self.pixel_values} if self.grid_thw is None else \
            {"pixel_values": self.pixel_values, "image_grid_thw": self.grid_thw}


def image_key(png: bytes) -> str:
    """A stable name for an image (its content hash): the feature cache's key."""
    return hashlib.sha256(png).hexdigest()[:16]


def open_image(data: bytes, where: str = "image"):
    """A PIL RGB image from encoded bytes; UserError naming `where` if it is corrupt or too large."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise UserError(f"{where}: image of {len(data)} bytes is over the {MAX_IMAGE_BYTES}-byte limit")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise UserError(f"{where}: image of {img.width}x{img.height} pixels is over the "
                            f"{MAX_IMAGE_PIXELS}-pixel limit")
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    return img.convert("RGB")


def to_png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class VisionTokenizer:
    """A VLM's tokenizer and processor as one object the rest of the code passes around
    where it passes a tokenizer (attributes it does not define are the tokenizer's)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = getattr(processor, "image_token", IMAGE_TOKEN)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)

    def __getattr__(self, name):  # only called for names not found on self
        return getattr(self.__dict__["tokenizer"], name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def apply_chat_template(self, messages, **kwargs):
        """The tokenizer's chat template on `messages`, each `<image>` placeholder of a text
        content first made an image part ({"type": "image"}, TRL's layout), so a template
        renders it as its model expects (`<image>` for LLaVA, `<|vision_start|><|image_pad|>
        <|vision_end|>` for Qwen2-VL)."""
        return self.tokenizer.apply_chat_template([_with_image_parts(m) for m in messages], **kwargs)

    def encode_chat(self, text: str, images: Sequence[bytes]) -> list[int]:
        """Token ids of rendered chat `text` with each `<image>` expanded into the model's
        image tokens. UserError when placeholders and images disagree in number."""
        n = text.count(self.image_token)
        if n != len(images):
            raise UserError(f"prompt has {n} {self.image_token} placeholder(s) but {len(images)} image(s)")
        if not images:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = self.processor(text=[text], images=[open_image(b) for b in images], add_special_tokens=False)["input_ids"][0]
        return [int(t) for t in ids]

    def image_inputs(self, images: Sequence[bytes]) -> ImageInputs:
        """The image processor's pixel values for `images` (and their patch grids, for towers
        that take images of any size)."""
        out = self.processor.image_processor([open_image(b) for b in images], return_tensors="pt")
        return ImageInputs(out["pixel_values"].float(), out.get("image_grid_thw"))

    def save_pretrained(self, path) -> None:
        self.processor.save_pretrained(path)


def _with_image_parts(message: dict) -> dict:
    """`message` with a string content holding `<image>` placeholders as a list of parts."""
    content = message.get("content")
    if not isinstance(content, str) or IMAGE_TOKEN not in content:
        return message
    parts: list[dict] = []
    for i, piece in enumerate(content.split(IMAGE_TOKEN)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return {**message, "content": parts}


def is_vision_folder(path) -> bool:
    """Whether a model folder is a VLM (its config has a vision part)."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "vision_config" in cfg


def build_processor(tokenizer, spec: VisionSpec):
    """The built-in VLM's `LlavaProcessor`: `tokenizer` with an `<image>` token added, a CLIP
    image processor (PIL backend: torchvision is not needed) and the VLM chat template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    s = spec.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                   do_center_crop=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # num_additional_image_tokens=1: CLIP's class token, which the "default" strategy drops
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=spec.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=VLM_CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_vlm(text_config, spec: VisionSpec, image_token_id: int):
    """A randomly initialised `LlavaForConditionalGeneration`: a CLIP tower sized by `spec`,
    the language model of `text_config` (a `LlamaConfig`)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                              num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                              image_size=spec.image_size, patch_size=spec.patch_size)
    # vision_feature_layer -1: the tower's last layer (transformers' default -2 would leave the
    # last layer of a two-layer tower unused, without gradient)
    config = LlavaConfig(vision_config=vision, text_config=text_config, image_token_index=image_token_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=text_config.tie_word_embeddings)
    return LlavaForConditionalGeneration(config)


def image_token_id(model) -> int:
    """The token id a VLM's config reserves for image positions."""
    cfg = model.config
    tid = getattr(cfg, "image_token_id", None)
    return getattr(cfg, "image_token_index", None) if tid is None else tid


def image_features(model, images: ImageInputs) -> list:
    """One [tokens, hidden] tensor per image: the vision tower and projector's output, the
    rows that replace the image's placeholder tokens in the language model's input."""
    out = model.get_image_features(**images.model_kwargs())
    feats = getattr(out, "pooler_output", out)  # transformers 5.x returns a ModelOutput
    return [f.reshape(-1, f.shape[-1]) for f in feats]


def embed_with_images(model, input_ids, features: list, image_mask):
    """Input embeddings [b, P, H] of `input_ids` [b, P] with the positions of `image_mask`
    [b, P] (the prompts' image tokens), in row-major order, taken by `features`
    (image_features' rows, images in the order they appear): what the model's own forward
    does with pixel_values, so the logits match it. An image token the policy itself
    sampled in a response is not in the mask: it stays an ordinary token, as it is when the
    engine feeds it back while decoding."""
    return _scatter(model.get_input_embeddings()(input_ids), features, image_mask)  # [b, P, H]


@contextmanager
def images_in_embeddings(model, images: ImageInputs, image_mask, index):
    """Within the block, the model's input embedding of a [N, L] batch comes out with the
    positions of `image_mask` [N, L] taken by image features: those of `images[index[i]]`
    for the i-th image placeholder in row-major order (`index` [I]: each distinct image's
    features are computed once). embed_with_images done inside the model's own forward,
    where FSDP2 has gathered the root's parameters (embeddings, vision tower, projector are
    sharded outside it). Exactly one embedding call must happen in the block."""
    calls = []

    def put_images(module, args, embeds):  # embeds [N, L, H]
        calls.append(embeds.shape)
        features = image_features(model, images)  # one per distinct image
        return _scatter(embeds, [features[u] for u in index.tolist()], image_mask)

    handle = model.get_input_embeddings().register_forward_hook(put_images)
    try:
        yield
    finally:
        handle.remove()
    if len(calls) != 1:
        raise RuntimeError(f"the model embedded {len(calls)} inputs in one forward; images need exactly one")


def _scatter(embeds, features: list, image_mask):
    """`embeds` [b, P, H] with the rows of `image_mask` [b, P] replaced, in row-major order,
    by the images' feature rows."""
    rows = _cat(features, embeds)
    if int(image_mask.sum()) != rows.shape[0]:
        raise UserError(f"the prompts hold {int(image_mask.sum())} image positions but their images give "
                        f"{rows.shape[0]} feature rows (was a prompt truncated through its image tokens?)")
    return embeds.masked_scatter(image_mask[..., None].to(embeds.device), rows.to(embeds.dtype))


def _cat(features: list, like):
    """The feature rows of all images, [sum tokens, hidden] (empty: [0, hidden] like `like`)."""
    import torch

    return torch.cat(features) if features else like.new_zeros((0, like.shape[-1]))


def prompt_image_mask(input_ids, spans: list[tuple[int, int]], image_id: int):
    """[b, P] bool: the positions holding `image_id` inside each row's prompt, which spans
    columns [spans[i][0], spans[i][1]) of row i (left- or right-padded rows alike)."""
    import torch

    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # [1, P]
    start = torch.tensor([a for a, _ in spans], device=input_ids.device)[:, None]  # [b, 1]
    end = torch.tensor([e for _, e in spans], device=input_ids.device)[:, None]  # [b, 1]
    return (input_ids == image_id) & (pos >= start) & (pos < end)


def rope_positions(model, input_ids, attention_mask, image_mask=None, grid_thw=None):
    """Position ids of `input_ids` [b, P] (real tokens where attention_mask [b, P] is 1,
    padding on either side) and each row's offset for the tokens that follow.

    One-row rotary models: [b, P] = 0, 1, 2, ... over each row's real tokens, offsets 0.
    Multi-row rotary models (Qwen2-VL's M-RoPE: a temporal, a height and a width row):
    [3, b, P] from the model's own `get_rope_index`, where the image tokens of `image_mask`
    [b, P] (the prompts', in order, of grids `grid_thw` [I, 3]) take 2-D positions and a
    row's later tokens continue after its largest one; offsets [b] = that largest position
    + 1 - the row's real length, so token n of a row (counting real tokens from 0) sits at
    n + offset: what the engine gives each decoded token.
    """
    import torch

    pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # [b, P]
    offsets = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)  # [b]
    rope_index = getattr(getattr(model, "model", None), "get_rope_index", None)
    if rope_index is None:
        return pos, offsets
    types = torch.zeros_like(input_ids, dtype=torch.int) if image_mask is None else image_mask.int()  # [b, P]
    positions, deltas = rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=grid_thw,
                                   attention_mask=attention_mask)
    return positions, deltas.reshape(-1).to(offsets)  # [3, b, P], [b]
