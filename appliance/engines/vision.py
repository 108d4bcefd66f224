"""Llama 3.2 Vision (Mllama) inference: one loader for the real 11B weights and the tiny ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from appliance.engines.common import (
    Generation,
    GenParams,
    pad_left,
    resolve_device,
    resolve_dtype,
)
from appliance.engines.inflight import InflightBatch, RowRequest
from appliance.errors import InvalidRequest, ModelError
from appliance.registry import MANIFEST, load_local, read_manifest
from appliance.schema import ChatTurn, Prompt

IMAGE_TOKEN = "<|image|>"
QUANTIZATIONS = ("none", "int8", "int4")

__all__ = ["GenParams", "Generation", "VisionEngine", "quantization_config"]


def quantization_config(quantization: str, device: torch.device) -> Any:
    """Weight-only torchao config for `from_pretrained`, or None for full precision."""
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        raise ModelError(
            f"unknown quantization {quantization!r}; choose {', '.join(QUANTIZATIONS)}"
        )
    try:
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig
    except ImportError as err:
        raise ModelError(f"quantization {quantization} needs torchao: {err}") from None
    if quantization == "int8":
        quant = Int8WeightOnlyConfig()
    elif device.type == "cuda":
        # tinygemm's tile-packed layout is the fast int4 kernel on NVIDIA GPUs.
        quant = Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
    else:
        # The CUDA int4 layouts have no CPU kernels; intx with int4 weights runs on CPUs.
        quant = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    return TorchAoConfig(quant_type=quant)


class VisionEngine:
    """A loaded Mllama model and its processor. Build with `VisionEngine.load`."""

    def __init__(self, model: Any, processor: Any, *, name: str, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        tokenizer = processor.tokenizer
        self._eos = pad_left(tokenizer, model.generation_config, "<|finetune_right_pad_id|>")

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quantization: str = "none",
    ) -> VisionEngine:
        from transformers import AutoProcessor, MllamaForConditionalGeneration

        model_dir = Path(model_dir)
        name = read_manifest(model_dir).name if (model_dir / MANIFEST).is_file() else model_dir.name
        what = f"vision model {name}"
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        qconf = quantization_config(quantization, dev)
        if qconf is not None:
            kwargs["quantization_config"] = qconf
        if dev.type == "cuda":
            kwargs["device_map"] = {"": dev.index or 0}
        processor = load_local(what, model_dir, AutoProcessor.from_pretrained)
        model = load_local(
            what, model_dir, MllamaForConditionalGeneration.from_pretrained, **kwargs
        )
        if dev.type != "cuda":
            model = model.to(dev)
        model.eval()
        return cls(model, processor, name=name, device=dev)

    def generate(self, image: Image.Image | None, prompt: Prompt, params: GenParams) -> Generation:
        return self.generate_batch([image], [prompt], params)[0]

    def build_text(self, prompt: Prompt, image: bool = True) -> str:
        """The chat-template text for one row: `prompt` as one user turn, or a conversation;
        `image`: the row has an image, placed in the user turn that carried it (the first user
        turn for a plain prompt)."""
        messages = _template_messages(prompt, image)
        template_owner = (
            self.processor
            if getattr(self.processor, "chat_template", None)
            else self.processor.tokenizer
        )
        text = template_owner.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        # A prompt without the image marker passes the processor and then fails inside generate.
        if text.count(IMAGE_TOKEN) != int(image):
            raise ModelError(
                f"vision model {self.name}: chat template does not place {IMAGE_TOKEN}"
            )
        return text

    @property
    def end_ids(self) -> set[int]:
        """The tokens that end a row (end of turn, end of text)."""
        return set(self._eos)

    @property
    def top_k(self) -> int:
        # Sampling keeps the checkpoint's top-k, as `generate` did (50 when it names none).
        return int(getattr(self.model.generation_config, "top_k", None) or 0)

    def decode(self, ids: list[int]) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def row_inputs(self, image: Image.Image | None, prompt: Prompt) -> dict[str, torch.Tensor]:
        """The processor's tensors for one row (batch of one), on the engine's device."""
        text = self.build_text(prompt, image=image is not None)
        rgb = None if image is None else [[image if image.mode == "RGB" else image.convert("RGB")]]
        inputs = self.processor(
            images=rgb,
            text=[text],
            add_special_tokens=False,  # the chat template already starts with BOS
            return_tensors="pt",
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return dict(inputs)

    def generate_batch(
        self, images: list[Image.Image | None], prompts: list[Prompt], params: GenParams
    ) -> list[Generation]:
        """All rows through one in-flight batch (see `engines.inflight`); results in input
        order. A row whose image is None is text only."""
        if len(images) != len(prompts):
            raise InvalidRequest(f"{len(images)} images but {len(prompts)} prompts")
        return self.generate_rows(
            [
                RowRequest(image, prompt, params)
                for image, prompt in zip(images, prompts, strict=True)
            ],
            should_stop=params.should_stop,
        )

    def inflight(
        self, max_rows: int = 8, budget_bytes: int | None = None, static: bool = False
    ) -> InflightBatch:
        """A new, empty in-flight batch on this engine."""
        return InflightBatch(self, max_rows=max_rows, budget_bytes=budget_bytes, static=static)

    def generate_rows(
        self,
        rows: list[RowRequest],
        max_rows: int = 8,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """Rows of any sampling parameters through one in-flight batch, in input order; a row
        that fails raises its error (a cancel raises `Cancelled`)."""
        batch = self.inflight(max_rows)
        for i, row in enumerate(rows):
            row.key = i
            batch.add(row)
        done = {f.key: f for f in batch.run_all(should_stop)}
        out = []
        for i in range(len(rows)):
            if done[i].error is not None:
                raise done[i].error
            out.append(done[i].generation)
        return out


def _template_messages(prompt: Prompt, image: bool) -> list[dict[str, Any]]:
    """Chat-template messages for `prompt`, with the image part where it belongs."""
    turns = [ChatTurn(role="user", text=prompt, image=image)] if isinstance(prompt, str) else prompt
    if image and not any(turn.image for turn in turns):
        raise InvalidRequest("the conversation has no turn for its image")
    # Llama 3.2 Vision's template refuses a system message next to an image: fold the system
    # text into the first user turn instead, so the instruction still reaches the model.
    system = "\n\n".join(t.text for t in turns if t.role == "system") if image else ""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "system":
            if not image:  # templates read a system message's content as a string
                messages.append({"role": "system", "content": turn.text})
            continue
        text = turn.text
        if system and turn.role == "user":
            text, system = f"{system}\n\n{text}", ""
        parts: list[dict[str, Any]] = [{"type": "image"}] if image and turn.image else []
        messages.append({"role": turn.role, "content": [*parts, {"type": "text", "text": text}]})
    return messages
