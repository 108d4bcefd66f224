"""Pieces shared by the vision and summarizer engines: device choice, params, results, clocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from appliance.errors import ModelError
from appliance.vocab import LENGTH, STOP, FinishReason

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class GenParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    # Keep each step's raw logits in `Generation.logits` (tests compare near ties with them).
    return_logits: bool = False
    # Benchmarks force a fixed decode length; random weights may otherwise stop at once.
    min_new_tokens: int = 0
    # More tokens that end a row as the model's end-of-turn tokens do (stop tokens; tests use
    # one to make a random-weight model stop on a known step).
    stop_token_ids: tuple[int, ...] = ()
    # Asked after every decoding step: True ends the generation and raises `Cancelled` (a job
    # cancelled while it runs frees its GPU at once instead of decoding to the end).
    should_stop: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    # (steps, vocab) float32 on CPU when GenParams.return_logits; one row per generated token,
    # including the step that produced the end-of-turn token.
    logits: torch.Tensor | None = None
    # STOP: the row ended on an end-of-turn (or stop) token; LENGTH: max_new_tokens cut it.
    finish_reason: FinishReason = STOP
    # The row's prompt length in tokens, padding excluded.
    prompt_tokens: int = 0


def set_cpu_threads(threads: int) -> None:
    """Size torch's intra-op pool for this process (0 leaves torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda:0")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # CPUs lack fast bf16 matmuls on most of our boxes, and fp32 keeps CPU tests exact.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PrefillClock:
    """A logits processor that only notes when the first step's logits exist.

    `generate` calls logits processors after every forward pass; the first call therefore marks
    the end of prefill (vision encoder + prompt), and the rest of the run is decode. This times a
    single `generate` call instead of running the prompt twice.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first: float | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            sync(self.device)
            self.first = time.perf_counter()
        self.steps += 1
        return scores


def timings(
    preprocess_s: float, start: float, clock: PrefillClock, end: float, batch: int
) -> dict[str, float]:
    first = clock.first if clock.first is not None else end
    decode_s = max(end - first, 0.0)
    decode_steps = max(clock.steps - 1, 0)
    return {
        "preprocess_ms": preprocess_s * 1000.0,
        "prefill_ms": (first - start) * 1000.0,
        "decode_ms": decode_s * 1000.0,
        # Per sequence: decode steps after the first token, per second of decode.
        "tokens_per_s": decode_steps / decode_s if decode_s > 0 else 0.0,
        "batch_size": float(batch),
    }


def greedy_kwargs(params: GenParams) -> dict[str, Any]:
    if params.temperature and params.temperature > 0:
        return {"do_sample": True, "temperature": float(params.temperature), "top_p": 1.0}
    # Explicit Nones silence the checkpoints' sampling defaults (the 11B ships temperature 0.6).
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def seed_all(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[:i]
    return ids


def end_of_row(ids: list[int], eos: set[int]) -> tuple[list[int], FinishReason]:
    """The row's tokens before its first end token, and why it ended: STOP at an end token;
    LENGTH without one (the row ran to max_new_tokens: `generate` stops a row on nothing else,
    and a cancel raises instead of returning)."""
    kept = cut_at_eos(ids, eos)
    return kept, STOP if len(kept) < len(ids) else LENGTH


def eos_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    eos = generation_config.eos_token_id
    found = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for tok in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            found.add(tid)
    return found


def pad_left(tokenizer: Any, generation_config: Any, pad_token: str | None = None) -> set[int]:
    """Set the tokenizer up for batched generation and return the ids that end a row.

    Batches are padded on the left so every row's next token follows its own prompt; the pad
    token is `pad_token` when the vocabulary has it, else EOS (attention masks hide it)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab() if pad_token is not None else {}
        tokenizer.pad_token = pad_token if pad_token in vocab else tokenizer.eos_token
    return eos_ids(generation_config, tokenizer)
