"""Llama 3.2 Vision (Mllama) inference: one loader for the real 11B weights and the tiny ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from appliance.engines.common import (
    Generation,
    GenParams,
    PrefillClock,
    end_of_row,
    greedy_kwargs,
    pad_left,
    resolve_device,
    resolve_dtype,
    seed_all,
    sync,
    timings,
)
from appliance.errors import Cancelled, InvalidRequest, ModelError
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

    def generate_batch(
        self, images: list[Image.Image | None], prompts: list[Prompt], params: GenParams
    ) -> list[Generation]:
        """One padded `generate` call for all rows; results are in input order. A row whose
        image is None is text only (Mllama then skips its cross-attention layers)."""
        if len(images) != len(prompts):
            raise InvalidRequest(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        text_only = [i for i, image in enumerate(images) if image is None]
        if text_only and len(text_only) < len(images):
            # The processor refuses a batch where some rows have an image and others none.
            return self._split(images, prompts, params, text_only)
        t0 = time.perf_counter()
        texts = [self.build_text(p, image=not text_only) for p in prompts]
        rgb = [
            [img if img.mode == "RGB" else img.convert("RGB")] for img in images if img is not None
        ]
        inputs = self.processor(
            images=rgb or None,
            text=texts,
            add_special_tokens=False,  # the chat template already starts with BOS
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sync(self.device)
        t1 = time.perf_counter()

        clock = PrefillClock(self.device)
        seed_all(params.seed)
        stopping = None
        if params.should_stop is not None:
            from transformers import StoppingCriteriaList

            stopping = StoppingCriteriaList([_StopWhen(params.should_stop)])
        ends = self._eos | set(params.stop_token_ids)
        extra: dict[str, Any] = {"eos_token_id": sorted(ends)} if params.stop_token_ids else {}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=params.min_new_tokens or None,
                logits_processor=[clock],
                stopping_criteria=stopping,
                return_dict_in_generate=True,
                output_logits=params.return_logits,
                **greedy_kwargs(params),
                **extra,
            )
        sync(self.device)
        t2 = time.perf_counter()
        if params.should_stop is not None and params.should_stop():
            raise Cancelled("cancelled while it ran")

        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        new = out.sequences[:, prompt_len:].tolist()
        stamp = timings(t1 - t0, t1, clock, t2, len(images))
        results = []
        for row, row_ids in enumerate(new):
            ids, finish = end_of_row(row_ids, ends)
            logits = None
            if params.return_logits and out.logits:
                steps = min(len(ids) + 1, len(out.logits))
                logits = torch.stack([out.logits[s][row] for s in range(steps)]).float().cpu()
            text = self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append(
                Generation(
                    text=text,
                    token_ids=ids,
                    timings=dict(stamp),
                    logits=logits,
                    finish_reason=finish,
                    prompt_tokens=int(prompt_tokens[row]),
                )
            )
        return results

    def _split(
        self,
        images: list[Image.Image | None],
        prompts: list[Prompt],
        params: GenParams,
        text_only: list[int],
    ) -> list[Generation]:
        """Rows with images and text-only rows as two `generate` calls, in input order."""
        rest = set(range(len(images))) - set(text_only)
        groups = [text_only, sorted(rest)]
        done: dict[int, Generation] = {}
        for rows in groups:
            gens = self.generate_batch(
                [images[i] for i in rows], [prompts[i] for i in rows], params
            )
            done.update(zip(rows, gens, strict=True))
        return [done[i] for i in range(len(images))]


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


class _StopWhen:
    """A `generate` stopping criterion: every row stops once `should_stop()` says so."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device
        )
