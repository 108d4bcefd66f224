"""Tiny Llama Guard 3 stand-ins, and steering them to a chosen verdict.

`make_tiny_guards(root)` (built with the other tiny models in `appliance.build.tiny`) writes `tiny-mllama-guard` (Mllama, like Llama Guard 3 11B Vision) and
`tiny-llama-guard` (Llama, like Llama Guard 3 1B), role `safety`, each carrying the guards' own
chat template (`appliance.safety.template`). Their random answers are not verdicts, which is
what the strict parser and the fail mode are for.

`steer_guard(src, dst, answer)` copies a guard and sets its weights so that greedy decoding
answers `answer` (e.g. "unsafe\\nS2") to any conversation, through the real model call: every
layer's output projection is zeroed, so the last hidden state is the current token's
embedding, and the embeddings and `lm_head` of the answer's tokens form a chain (the prompt's
last token -> first answer token -> ... -> end of turn). Tests and benchmarks use it to get a
chosen verdict without touching the model class.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.build.tiny import (
    TEXT_GUARD_NAME,
    VISION_GUARD_NAME,
    _normalise_json,
    make_tiny_guards,
)
from appliance.registry import MANIFEST, read_manifest, write_manifest

__all__ = ["TEXT_GUARD_NAME", "VISION_GUARD_NAME", "make_tiny_guards", "steer_guard"]
# Logit of each chain step; every other token's logit is exactly 0 at these steps.
_STEER = 50.0


def steer_guard(src: Path, dst: Path, answer: str, name: str | None = None) -> Path:
    """A copy of the guard at `src` in `dst` whose greedy answer is always `answer`."""
    import torch

    from appliance.engines.guard import GuardEngine

    info = read_manifest(src)
    engine = GuardEngine.load(src, device="cpu", dtype="float32")
    model, tok = engine.model, engine.tokenizer
    probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    start = tok(engine.render(probe, {}, []), add_special_tokens=False)["input_ids"][-1]
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    chain = [start, *ids, tok.convert_tokens_to_ids("<|eot_id|>")]
    current = chain[:-1]
    if len(set(current)) != len(current):
        raise ValueError(f"cannot steer to {answer!r}: a token repeats in {chain}")
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    decoder = model.get_decoder()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "vision" not in pname and pname.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        decoder.norm.weight.fill_(1.0)
        for dim, (tok_now, tok_next) in enumerate(zip(current, chain[1:], strict=True)):
            embed[tok_now].zero_()
            embed[tok_now, dim] = 1.0
            head[:, dim] = 0.0
            head[tok_next, dim] = _STEER
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST, "*.safetensors*"))
    model.save_pretrained(dst, safe_serialization=True)
    _normalise_json(dst)
    write_manifest(dst, name or dst.name, info.role, info.architecture, demo=True)
    return dst
