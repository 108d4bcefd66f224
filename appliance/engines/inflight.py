"""Continuous (in-flight) batching for Mllama: rows join and leave the running batch at every
decode step.

The loop calls `MllamaForConditionalGeneration.forward` itself instead of `generate`:

- a row joins with its own prefill (batch of one: image through the vision encoder, prompt
  through the text model), and its caches are merged into the running batch before the next
  step. Self-attention K/V are left-padded to the batch's length (the 2-D attention mask hides
  the padding); cross-attention K/V have one length for every single-image row (the vision
  encoder always emits `max_num_tiles` tiles, the cross mask hides the unused ones). A
  text-only row gets zero cross K/V and an all-zero cross mask: Mllama then multiplies the
  cross layers' output by 0 for that row, which is exactly what skipping them alone does;
- each decode step feeds every row its last token at its own position id, without a
  `cache_position` (the model derives it from the cache, and the per-row cross mask then needs
  no text axis beyond the one token);
- a row leaves at its end token, its own `max_new_tokens`, a cancel or its deadline: its index
  is dropped from every cache tensor, and padding columns no row needs any more are cut.

Each row samples on its own (greedy, or temperature with its own seeded `torch.Generator`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from appliance.engines.common import Generation, GenParams, sync
from appliance.errors import Cancelled
from appliance.schema import Prompt
from appliance.vocab import LENGTH, STOP

# The CPU batch's KV + cross-attention budget when no setting gives one.
DEFAULT_CPU_BUDGET_BYTES = 4 << 30


@dataclass
class RowRequest:
    """One row to generate: a page (or a text-only chat) with its own sampling and limit."""

    image: Image.Image | None
    prompt: Prompt
    params: GenParams
    key: Any = None  # the caller's handle, returned in `Finished`
    # Called with the row's text so far after every token it produces (streaming).
    on_text: Callable[[str], None] | None = None
    deadline: float | None = None  # time.monotonic() after which the row fails (time limit)
    priority: int = 1  # 0 first: interactive rows take free rows before bulk ones


@dataclass
class Finished:
    key: Any
    generation: Generation | None
    error: BaseException | None = None


@dataclass
class _Row:
    req: RowRequest
    length: int  # real tokens in this row's self-attention cache
    cross_mask: torch.Tensor  # (1, 1, 1, tiles): the mask of the row's next token
    ends: set[int]
    generator: torch.Generator | None
    prompt_tokens: int
    timings: dict[str, float]
    started: float
    tokens: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    next_token: int = -1
    steps: int = 0
    rows_seen: int = 0


class InflightBatch:
    """The running batch of one engine. Not thread-safe: drive it from one thread.

    `add` queues a row; `step` admits the queued rows that fit (free rows, memory budget),
    runs one decode step for the whole batch and returns the rows that ended in it.
    `static=True` emulates the old static batching: rows join only when the batch is empty.
    """

    def __init__(
        self,
        engine: Any,
        max_rows: int = 4,
        budget_bytes: int | None = None,
        static: bool = False,
    ) -> None:
        self.engine = engine
        self.model = engine.model
        self.device: torch.device = engine.device
        self.max_rows = max(1, max_rows)
        self.static = static
        self.budget = budget_bytes if budget_bytes is not None else default_budget(self.device)
        cfg = self.model.config
        text, vision = cfg.text_config, cfg.vision_config
        self.cross_layers = set(text.cross_attention_layers)
        self.n_layers = text.num_hidden_layers
        self.kv_heads = text.num_key_value_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.tiles = vision.max_num_tiles
        patches = (vision.image_size // vision.patch_size) ** 2 + 1
        self.cross_len = self.tiles * patches
        self.elem = torch.finfo(self.model.dtype).bits // 8
        self.waiting: deque[RowRequest] = deque()
        self.rows: list[_Row] = []
        self.keys: list[torch.Tensor] = []  # per layer (B, kv_heads, L, head_dim)
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # (B, L) self-attention mask
        self.cancelled: set[Any] = set()

    # -- the caller's side ------------------------------------------------------------------

    def add(self, req: RowRequest) -> None:
        """Queue a row; interactive rows (lower `priority`) go ahead of bulk ones."""
        end = len(self.waiting)
        at = next((i for i, w in enumerate(self.waiting) if w.priority > req.priority), end)
        self.waiting.insert(at, req)

    def cancel(self, key: Any) -> None:
        """End the row (running or waiting) with `Cancelled` at the next step."""
        self.cancelled.add(key)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    @property
    def free_rows(self) -> int:
        return max(0, self.max_rows - len(self.rows) - len(self.waiting))

    def row_bytes(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """Memory a row holds at its longest: self-attention K/V for every position it may
        reach, plus its cross-attention K/V (text-only rows hold zeros of the same size)."""
        per_pos = 2 * self.kv_heads * self.head_dim * self.elem
        self_layers = self.n_layers - len(self.cross_layers)
        return per_pos * (
            self_layers * (prompt_tokens + max_new_tokens) + len(self.cross_layers) * self.cross_len
        )

    def reserved(self) -> int:
        return sum(self.row_bytes(r.prompt_tokens, r.req.params.max_new_tokens) for r in self.rows)

    def step(self) -> list[Finished]:
        """Admit what fits, decode one token for every row, return the rows that ended."""
        done = self._drop_cancelled()
        done += self._admit()
        if not self.rows:
            return done
        t0 = time.perf_counter()
        logits = self._decode()
        greedy = logits.float().argmax(-1).tolist()  # one device sync for the whole batch
        sync(self.device)
        step_ms = (time.perf_counter() - t0) * 1000
        leaving: list[int] = []
        now = time.monotonic()
        for i, row in enumerate(self.rows):
            row.timings["decode_ms"] += step_ms
            row.rows_seen = max(row.rows_seen, len(self.rows))
            if self._take(row, logits[i], greedy[i]):
                done.append(Finished(row.req.key, self._result(row)))
                leaving.append(i)
            elif row.req.deadline is not None and now > row.req.deadline:
                done.append(Finished(row.req.key, None, TimeoutError("the row ran out of time")))
                leaving.append(i)
        self._remove(leaving)
        return done

    def run_all(self, should_stop: Callable[[], bool] | None = None) -> list[Finished]:
        """Step until every queued and running row has ended (the static-shaped entry point)."""
        out: list[Finished] = []
        while self.busy:
            if should_stop is not None and should_stop():
                self.clear()
                raise Cancelled("cancelled while it ran")
            out += self.step()
        return out

    def clear(self) -> list[RowRequest]:
        """Drop every row (after an OOM, say); returns the requests that were in the batch."""
        reqs = [r.req for r in self.rows] + list(self.waiting)
        self.rows, self.keys, self.values, self.mask = [], [], [], None
        self.waiting.clear()
        self.cancelled.clear()
        return reqs

    # -- admission and prefill --------------------------------------------------------------

    def _drop_cancelled(self) -> list[Finished]:
        if not self.cancelled:
            return []
        done = [
            Finished(r.key, None, Cancelled("cancelled while it ran"))
            for r in self.waiting
            if r.key in self.cancelled
        ]
        self.waiting = deque(r for r in self.waiting if r.key not in self.cancelled)
        gone = [i for i, r in enumerate(self.rows) if r.req.key in self.cancelled]
        done += [
            Finished(self.rows[i].req.key, None, Cancelled("cancelled while it ran")) for i in gone
        ]
        self._remove(gone)
        self.cancelled.clear()
        return done

    def _admit(self) -> list[Finished]:
        done: list[Finished] = []
        if self.static and self.rows:
            return done
        while self.waiting and len(self.rows) < self.max_rows:
            req = self.waiting[0]
            need = self.row_bytes(_estimate_tokens(req), req.params.max_new_tokens)
            if self.rows and self.reserved() + need > self.budget:
                break  # waits for a row to leave; an empty batch always takes one row
            self.waiting.popleft()
            try:
                row, k, v, first_logits = self._prefill(req)
            except Exception as exc:  # noqa: BLE001 - the row's own failure, not the batch's
                if _is_oom(exc):
                    raise
                done.append(Finished(req.key, None, exc))
                continue
            self._merge(row, k, v)
            row.rows_seen = len(self.rows)
            if self._take(row, first_logits):
                done.append(Finished(req.key, self._result(row)))
                self._remove([len(self.rows) - 1])
        return done

    def _prefill(self, req: RowRequest) -> tuple[_Row, list, list, torch.Tensor]:
        from transformers import DynamicCache

        engine = self.engine
        t0 = time.perf_counter()
        inputs = engine.row_inputs(req.image, req.prompt)
        sync(self.device)
        t1 = time.perf_counter()
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(self.device)
        t2 = time.perf_counter()
        prompt_len = int(inputs["input_ids"].shape[1])
        if "cross_attention_mask" in inputs:
            cross_mask = inputs["cross_attention_mask"][:, -1:].to(torch.long)
        else:
            cross_mask = torch.zeros(1, 1, 1, self.tiles, dtype=torch.long, device=self.device)
        keys, values = [], []
        for idx in range(self.n_layers):
            layer = cache.layers[idx]
            if idx in self.cross_layers and (not layer.is_initialized or layer.keys.numel() == 0):
                zero = torch.zeros(
                    1, self.kv_heads, self.cross_len, self.head_dim,
                    dtype=self.model.dtype, device=self.device,
                )  # fmt: skip
                keys.append(zero)
                values.append(zero)
            else:
                keys.append(layer.keys)
                values.append(layer.values)
        params = req.params
        generator = None
        if params.temperature and params.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else generator.seed())
        row = _Row(
            req=req,
            length=prompt_len,
            cross_mask=cross_mask,
            ends=self.engine.end_ids | set(params.stop_token_ids),
            generator=generator,
            prompt_tokens=prompt_len,
            timings={
                "preprocess_ms": (t1 - t0) * 1000,
                "prefill_ms": (t2 - t1) * 1000,
                "decode_ms": 0.0,
            },
            started=t2,
        )
        return row, keys, values, out.logits[0, -1]

    def _merge(self, row: _Row, keys: list, values: list) -> None:
        """Append the row at the batch's last index, left-padding whichever side is shorter."""
        length = row.length
        if not self.rows:
            self.keys, self.values = keys, values
            self.mask = torch.ones(1, length, dtype=torch.long, device=self.device)
            self.rows.append(row)
            return
        assert self.mask is not None
        total = self.mask.shape[1]
        width = max(total, length)
        if width > total:
            self.mask = _pad_left(self.mask, width - total)
        new_mask = _pad_left(
            torch.ones(1, length, dtype=torch.long, device=self.device), width - length
        )
        self.mask = torch.cat([self.mask, new_mask])
        for idx in range(self.n_layers):
            k, v, nk, nv = self.keys[idx], self.values[idx], keys[idx], values[idx]
            if idx not in self.cross_layers:
                k, v = _pad_left(k, width - total, dim=2), _pad_left(v, width - total, dim=2)
                nk, nv = _pad_left(nk, width - length, dim=2), _pad_left(nv, width - length, dim=2)
            self.keys[idx] = torch.cat([k, nk])
            self.values[idx] = torch.cat([v, nv])
        self.rows.append(row)

    def _remove(self, indices: list[int]) -> None:
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.keys, self.values, self.mask = [], [], None
            return
        assert self.mask is not None
        index = torch.tensor(keep, device=self.device)
        # Compaction: the columns every remaining row has as padding go.
        cut = self.mask.shape[1] - max(r.length for r in self.rows)
        self.mask = self.mask.index_select(0, index)[:, cut:]
        for idx in range(self.n_layers):
            k = self.keys[idx].index_select(0, index)
            v = self.values[idx].index_select(0, index)
            if idx not in self.cross_layers and cut:
                k, v = k[:, :, cut:], v[:, :, cut:]
            self.keys[idx], self.values[idx] = k, v

    # -- decoding ---------------------------------------------------------------------------

    def _decode(self) -> torch.Tensor:
        from transformers import DynamicCache

        assert self.mask is not None
        n = len(self.rows)
        ids = torch.tensor([[r.next_token] for r in self.rows], device=self.device)
        positions = torch.tensor([[r.length] for r in self.rows], device=self.device)
        self.mask = torch.cat(
            [self.mask, torch.ones(n, 1, dtype=torch.long, device=self.device)], 1
        )
        cross = torch.cat([r.cross_mask for r in self.rows])
        cache = DynamicCache(config=self.model.config)
        for idx in range(self.n_layers):
            cache.layers[idx].lazy_initialization(self.keys[idx])
            cache.layers[idx].keys, cache.layers[idx].values = self.keys[idx], self.values[idx]
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=self.mask,
                cross_attention_mask=cross,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        for idx in range(self.n_layers):
            self.keys[idx], self.values[idx] = cache.layers[idx].keys, cache.layers[idx].values
        for row in self.rows:
            row.length += 1
        return out.logits[:, -1]

    def _take(self, row: _Row, logits: torch.Tensor, greedy: int | None = None) -> bool:
        """Pick the row's next token from its logits (`greedy`: their argmax, computed for
        the whole batch at once); True when the row ends with it."""
        params = row.req.params
        scores = logits.float()
        if params.return_logits:
            row.logits.append(scores.detach().cpu())
        if len(row.tokens) < params.min_new_tokens:
            scores = scores.clone()
            scores[list(row.ends)] = float("-inf")
            greedy = None
        if row.generator is not None:
            token = _sample(scores, params.temperature, self.engine.top_k, row.generator)
        else:
            token = greedy if greedy is not None else int(scores.argmax())
        row.steps += 1
        if token in row.ends:
            row.finish = STOP  # type: ignore[attr-defined]
            return True
        row.tokens.append(token)
        row.next_token = token
        if row.req.on_text is not None:
            row.req.on_text(self.engine.decode(row.tokens))
        if len(row.tokens) >= params.max_new_tokens:
            row.finish = LENGTH  # type: ignore[attr-defined]
            return True
        return False

    def _result(self, row: _Row) -> Generation:
        decode_s = row.timings["decode_ms"] / 1000
        steps = max(row.steps - 1, 0)
        timings = {
            **row.timings,
            "tokens_per_s": steps / decode_s if decode_s > 0 else 0.0,
            # The most rows it shared the batch with (1: it ran alone).
            "batch_size": float(max(row.rows_seen, 1)),
        }
        logits = torch.stack(row.logits) if row.req.params.return_logits and row.logits else None
        return Generation(
            text=self.engine.decode(row.tokens),
            token_ids=list(row.tokens),
            timings=timings,
            logits=logits,
            finish_reason=getattr(row, "finish", LENGTH),
            prompt_tokens=row.prompt_tokens,
        )


def default_budget(device: torch.device, fraction: float = 0.8) -> int:
    """The batch's memory budget: a share of the GPU memory free now (weights are loaded),
    or a fixed size on a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return DEFAULT_CPU_BUDGET_BYTES


def _estimate_tokens(req: RowRequest) -> int:
    # Before tokenizing: a generous guess from the characters (the chat template adds ~40).
    text = req.prompt if isinstance(req.prompt, str) else " ".join(t.text for t in req.prompt)
    return 64 + len(text) // 2


def _pad_left(t: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def _sample(scores: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    scores = scores / float(temperature)
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
