"""Text summarizer: a small Llama on onnxruntime when an ONNX export exists, else PyTorch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch

from appliance.engines.common import (
    Generation,
    GenParams,
    PrefillClock,
    end_of_row,
    greedy_kwargs,
    pad_left,
    resolve_device,
    seed_all,
    sync,
    timings,
)
from appliance.errors import ModelError
from appliance.registry import MANIFEST, load_local, read_manifest
from appliance.schema import LANGUAGES

Backend = Literal["auto", "onnx", "torch"]
# Long inputs are cut (from the end) so that prompt + answer stay well inside the context window.
MAX_INPUT_TOKENS = 6000

_SYSTEM = (
    "You summarize the output of an image-analysis system. Be factual and brief; keep names, "
    "numbers and dates; never invent content."
)


def onnx_dir(model_dir: Path) -> Path | None:
    for candidate in (model_dir / "onnx", model_dir):
        if (candidate / "model.onnx").is_file():
            return candidate
    return None


def ort_provider() -> str:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


class SummarizerEngine:
    def __init__(
        self, model: Any, tokenizer: Any, *, name: str, backend: str, device: torch.device
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.backend = backend
        self.device = device
        self._eos = pad_left(tokenizer, model.generation_config)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "auto",
        backend: Backend = "auto",
        cpu_threads: int = 0,
    ) -> SummarizerEngine:
        """`backend="auto"` takes `model_dir/onnx` when present (the fast path on CPU boxes).

        `cpu_threads` > 0 sizes onnxruntime's intra-op pool (0: one thread per core)."""
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        name = read_manifest(model_dir).name if (model_dir / MANIFEST).is_file() else model_dir.name
        what = f"summarizer model {name}"
        dev = resolve_device(device)
        ort_dir = onnx_dir(model_dir) if backend in ("auto", "onnx") else None
        if backend == "onnx" and ort_dir is None:
            raise ModelError(f"{what}: no ONNX export (model.onnx) under {model_dir}")
        if ort_dir is not None:
            import onnxruntime
            from optimum.onnxruntime import ORTModelForCausalLM

            provider = ort_provider()
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = cpu_threads
            model = load_local(
                what,
                ort_dir,
                ORTModelForCausalLM.from_pretrained,
                provider=provider,
                session_options=options,
                use_cache=True,
            )
            tokenizer = load_local(what, ort_dir, AutoTokenizer.from_pretrained)
            ort_device = dev if provider == "CUDAExecutionProvider" else torch.device("cpu")
            return cls(model, tokenizer, name=name, backend="onnx", device=ort_device)

        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = load_local(what, model_dir, AutoModelForCausalLM.from_pretrained, dtype=dtype)
        model = model.to(dev).eval()
        tokenizer = load_local(what, model_dir, AutoTokenizer.from_pretrained)
        return cls(model, tokenizer, name=name, backend="torch", device=dev)

    def summarize(
        self,
        text: str,
        language: str = "en",
        max_new_tokens: int = 256,
        *,
        params: GenParams | None = None,
    ) -> Generation:
        instruction = f"Summarize the following text in a few sentences. {_answer_in(language)}"
        return self._run(f"{instruction}\n\n{text}", params or GenParams(max_new_tokens))

    def digest(
        self,
        texts: list[str],
        language: str = "en",
        max_new_tokens: int = 256,
        *,
        params: GenParams | None = None,
    ) -> Generation:
        """One summary of many results (a drop-folder batch or an upload session)."""
        listing = "\n\n".join(f"[{i}] {t.strip()}" for i, t in enumerate(texts, 1))
        instruction = (
            f"Below are {len(texts)} results from one batch of documents. Write a short digest: "
            f"what the batch contains, common themes, and anything notable. {_answer_in(language)}"
        )
        return self._run(f"{instruction}\n\n{listing}", params or GenParams(max_new_tokens))

    def prompt_ids(self, user_text: str) -> torch.Tensor:
        ids = self.tokenizer(user_text, add_special_tokens=False)["input_ids"][:MAX_INPUT_TOKENS]
        user_text = self.tokenizer.decode(ids)
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user_text}]
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def _run(self, user_text: str, params: GenParams) -> Generation:
        t0 = time.perf_counter()
        input_ids = self.prompt_ids(user_text).to(self.device)
        attention_mask = torch.ones_like(input_ids)
        t1 = time.perf_counter()
        clock = PrefillClock(self.device)
        seed_all(params.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=params.max_new_tokens,
                logits_processor=[clock],
                return_dict_in_generate=True,
                output_logits=params.return_logits,
                pad_token_id=self.tokenizer.pad_token_id,
                **greedy_kwargs(params),
            )
        sync(self.device)
        t2 = time.perf_counter()
        ids, finish = end_of_row(out.sequences[0, input_ids.shape[1] :].tolist(), self._eos)
        logits = None
        if params.return_logits and out.logits:
            steps = min(len(ids) + 1, len(out.logits))
            logits = torch.stack([out.logits[s][0] for s in range(steps)]).float().cpu()
        return Generation(
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            token_ids=ids,
            timings=timings(t1 - t0, t1, clock, t2, 1),
            logits=logits,
            finish_reason=finish,
            prompt_tokens=int(input_ids.shape[1]),
        )


def _answer_in(language: str) -> str:
    if language not in LANGUAGES:
        raise ModelError(f"unknown language {language!r}")
    return f"Answer in {LANGUAGES[language]}."
