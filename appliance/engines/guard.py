"""Llama Guard 3 as an engine: the 11B Vision guard (Mllama) and the 1B guard (Llama).

Loaded by the same loaders as the other models: the vision guard through `VisionEngine.load`
(Mllama weights and processor, offline, the same dtype and quantization), the 1B guard as a
`LlamaForCausalLM` with its tokenizer through `load_local`. One `classify` call renders each
row with the guard's own chat template (categories, excluded keys) and decodes all rows in
one padded greedy `generate`, like the main generation's batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from appliance.engines.common import (
    GenParams,
    greedy_kwargs,
    pad_left,
    resolve_device,
    resolve_dtype,
)
from appliance.engines.vision import VisionEngine
from appliance.errors import ModelError
from appliance.registry import MANIFEST, load_local, read_manifest

# The architectures a `safety` model may have: the vision guard sees the image, the 1B not.
VISION_GUARD = "MllamaForConditionalGeneration"
TEXT_GUARD = "LlamaForCausalLM"
# "unsafe\nS1,S2,S3,..." never needs more; a longer answer is unparsable anyway.
MAX_VERDICT_TOKENS = 16


@dataclass
class GuardRow:
    """One conversation to judge: guard-template messages, and its image (vision guard)."""

    messages: list[dict[str, Any]]
    image: Image.Image | None = None


class GuardEngine:
    """A loaded guard. Build with `GuardEngine.load`."""

    def __init__(self, model: Any, processor: Any, tokenizer: Any, *, name: str, device: Any):
        self.model = model
        self.processor = processor  # None for the text guard
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.sees_images = processor is not None
        self._eos = pad_left(tokenizer, model.generation_config, "<|finetune_right_pad_id|>")
        owner = processor if getattr(processor, "chat_template", None) else tokenizer
        self.template = getattr(owner, "chat_template", None)
        if not self.template:
            raise ModelError(f"safety model {name}: no chat template (the guard's prompt format)")

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quantization: str = "none",
    ) -> GuardEngine:
        model_dir = Path(model_dir)
        info = read_manifest(model_dir) if (model_dir / MANIFEST).is_file() else None
        name = info.name if info else model_dir.name
        if info is not None and info.architecture == VISION_GUARD:
            vision = VisionEngine.load(
                model_dir, device=device, dtype=dtype, quantization=quantization
            )
            return cls(
                vision.model,
                vision.processor,
                vision.processor.tokenizer,
                name=name,
                device=vision.device,
            )
        from transformers import AutoTokenizer, LlamaForCausalLM

        what = f"safety model {name}"
        dev = resolve_device(device)
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, dev)}
        if dev.type == "cuda":
            kwargs["device_map"] = {"": dev.index or 0}
        tokenizer = load_local(what, model_dir, AutoTokenizer.from_pretrained)
        model = load_local(what, model_dir, LlamaForCausalLM.from_pretrained, **kwargs)
        if dev.type != "cuda":
            model = model.to(dev)
        model.eval()
        return cls(model, None, tokenizer, name=name, device=dev)

    def render(
        self, messages: list[dict[str, Any]], categories: dict[str, str], excluded: list[str]
    ) -> str:
        """The exact prompt the guard sees for one conversation."""
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            categories=categories,
            excluded_category_keys=excluded,
        )

    def classify(
        self,
        rows: list[GuardRow],
        categories: dict[str, str],
        excluded: list[str],
        max_new_tokens: int = MAX_VERDICT_TOKENS,
    ) -> list[tuple[str, float]]:
        """Each row's raw answer and its share of the wall time (ms), in input order."""
        if not rows:
            return []
        # The processor refuses a batch where some rows have an image and others none.
        seen = [r.image is not None and self.sees_images for r in rows]
        done: dict[int, tuple[str, float]] = {}
        for images in (True, False):
            group = [i for i, s in enumerate(seen) if s is images]
            if group:
                answers = self._generate([rows[i] for i in group], categories, excluded,
                                         max_new_tokens, images=images)  # fmt: skip
                done.update(zip(group, answers, strict=True))
        return [done[i] for i in range(len(rows))]

    def _generate(
        self,
        rows: list[GuardRow],
        categories: dict[str, str],
        excluded: list[str],
        max_new_tokens: int,
        images: bool,
    ) -> list[tuple[str, float]]:
        started = time.perf_counter()
        texts = [
            self.render(_without_images(r.messages) if not images else r.messages,
                        categories, excluded)
            for r in rows
        ]  # fmt: skip
        if images:
            rgb = [[r.image.convert("RGB") if r.image.mode != "RGB" else r.image] for r in rows]
            inputs = self.processor(images=rgb, text=texts, add_special_tokens=False,
                                    padding=True, return_tensors="pt")  # fmt: skip
        else:
            inputs = self.tokenizer(texts, add_special_tokens=False, padding=True,
                                    return_tensors="pt")  # fmt: skip
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self._eos),
                pad_token_id=self.tokenizer.pad_token_id,
                **greedy_kwargs(GenParams(temperature=0.0)),
            )
        prompt_len = inputs["input_ids"].shape[1]
        ms = (time.perf_counter() - started) * 1000 / len(rows)
        answers = []
        for row_ids in out[:, prompt_len:].tolist():
            kept = next((row_ids[:i] for i, t in enumerate(row_ids) if t in self._eos), row_ids)
            answers.append((self.tokenizer.decode(kept, skip_special_tokens=True), ms))
        return answers


def _without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A text guard (or a text-only batch) gets the conversation's text parts only."""
    return [
        {**m, "content": [c for c in m["content"] if c.get("type") != "image"]} for m in messages
    ]
