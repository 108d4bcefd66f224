"""Tiny random models shaped like the real ones, for tests, CI and CPU benchmarks.

`make_tiny(root)` writes a models root with a `tiny-mllama-vision` model (loads through the same
`VisionEngine.load` as the real Llama 3.2 11B Vision weights), a `tiny-llama-summarizer` model
with its ONNX export, and two tiny safety guards shaped like Llama Guard 3 11B Vision (Mllama)
and 1B (Llama) that carry the guards' chat template (`appliance.safety.template`). Everything is built offline and is byte-for-byte reproducible per seed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

VISION_NAME = "tiny-mllama-vision"
SUMMARIZER_NAME = "tiny-llama-summarizer"
# Llama Guard 3 stand-ins (role safety): 11B Vision is Mllama, 1B is Llama.
VISION_GUARD_NAME = "tiny-mllama-guard"
TEXT_GUARD_NAME = "tiny-llama-guard"

# The real Llama 3 special tokens, in their real order; `<|image|>` is appended last by the
# vision tokenizer so that its id equals the text vocab size, exactly as in the 11B checkpoint.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
IMAGE_TOKEN = "<|image|>"
BPE_VOCAB = 1024

# A Llama 3.2 Vision-like template: the image marker goes where the message puts it.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Training text for the BPE: instruction words, JSON and Markdown punctuation, a few languages.
_CORPUS = """
You are a careful assistant. Describe the image in one sentence. Write a short caption.
Write alt text for a screen reader: what matters, colours, people, text, layout.
Transcribe all text in the image exactly, line by line. Reproduce the table as a Markdown table.
| Name | Date | Amount |
|------|------|--------|
| Invoice | 2024-05-01 | 1,250.00 EUR |
Answer with exactly one of these labels: invoice, receipt, letter, photo, diagram, other.
Return only a JSON object with these keys: {"invoice_number": "A-1023", "date": "2024-05-01",
"total": "99.50", "vendor": "ACME GmbH", "iban": null, "items": ["apple", "bread"]}
The previous answer was not valid JSON. Fix it and answer again with only the JSON object.
Summarize the following results in a few sentences. Keep names, numbers and dates.
A red square, a blue circle and a green triangle on a white background. Sky, sea, sand, tree.
Answer in English. Antworte auf Deutsch. Réponds en français. Rispondi in italiano.
Responda em português. Responde en español. हिंदी में उत्तर दें। ตอบเป็นภาษาไทย
The quick brown fox jumps over the lazy dog. 0123456789 (a) [b] {c} <d> "e" 'f' ; : , . ! ?
Page 1 of 3. Total: 42. Street, city, postcode, phone, email, website, signature, stamp.
"""


# Llama 3.x position encoding, shared with the full-size config in bench/gpu_vision.py.
LLAMA3_ROPE: dict = {
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def make_tiny(root: Path, seed: int = 0) -> list[Path]:
    """Write the tiny vision and summarizer models and the two tiny safety guards under
    `root`; return their directories."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return [
        _make_vision(root / VISION_NAME, seed),
        _make_summarizer(root / SUMMARIZER_NAME, seed),
        *make_tiny_guards(root, seed),
    ]


def _train_tokenizer(with_image: bool):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS + ([IMAGE_TOKEN] if with_image else []))
    bos = tok.token_to_id("<|begin_of_text|>")
    # Like the real Llama 3 tokenizer: BOS is added by the post-processor.
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _eos_ids(tokenizer) -> list[int]:
    return [
        tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    ]


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=_eos_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def _text_sizes(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        **LLAMA3_ROPE,
        # Large enough that random logits are well separated: outputs vary and near ties are rare.
        initializer_range=0.15,
    )


def _make_vision(
    out: Path,
    seed: int,
    *,
    name: str = VISION_NAME,
    role: str = "vision",
    template: str = CHAT_TEMPLATE,
) -> Path:
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.models.mllama import MllamaImageProcessor, MllamaProcessor

    from appliance.registry import write_manifest

    tokenizer = _train_tokenizer(with_image=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    image_size, tiles = 56, 4
    hidden = 32
    layers = [0, 1]
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            image_size=image_size,
            patch_size=14,
            max_num_tiles=tiles,
            intermediate_layers_indices=layers,
            vision_output_dim=hidden * (1 + len(layers)),
            initializer_range=0.15,
        ),
        text_config=dict(
            **_text_sizes(image_id),
            num_hidden_layers=4,
            cross_attention_layers=[1, 3],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=_eos_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_id,
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    _open_gates(model, seed)
    model.generation_config = _generation_config(tokenizer)

    image_processor = MllamaImageProcessor(
        size={"height": image_size, "width": image_size}, max_image_tiles=tiles
    )
    tokenizer.chat_template = template
    processor = MllamaProcessor(image_processor, tokenizer, chat_template=template)

    _fresh(out)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    _normalise_json(out)
    write_manifest(out, name, role, "MllamaForConditionalGeneration", demo=True)
    return out


def _open_gates(model, seed: int) -> None:
    """Random init zeroes Mllama's tanh gates, which would make the text blind to the image."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gate", "_gate", "gate_attn", "gate_ffn")) and param.numel() <= 8:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))


def _write_llama(out: Path, seed: int, template: str | None = None) -> None:
    """A tiny Llama 3.2 1B-shaped model and its tokenizer in `out` (no manifest yet)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(with_image=False)
    if template is not None:
        tokenizer.chat_template = template
    config = LlamaConfig(
        **_text_sizes(len(tokenizer)),
        num_hidden_layers=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=_eos_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = _generation_config(tokenizer)

    _fresh(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _normalise_json(out)


def _make_summarizer(out: Path, seed: int) -> Path:
    from appliance.build.onnx_export import export_onnx
    from appliance.registry import write_manifest

    _write_llama(out, seed)
    # One manifest for the folder, written last, lists the torch files and the ONNX export.
    export_onnx(out, out / "onnx", write_manifests=False)
    _normalise_json(out / "onnx")
    write_manifest(out, SUMMARIZER_NAME, "summarizer", "LlamaForCausalLM", demo=True)
    return out


def make_tiny_guards(root: Path, seed: int = 0) -> list[Path]:
    """The two tiny Llama Guard 3 stand-ins (role safety) with the guards' chat template."""
    from appliance.registry import write_manifest
    from appliance.safety.template import GUARD_CHAT_TEMPLATE

    root = Path(root)
    vision = _make_vision(root / VISION_GUARD_NAME, seed + 7, name=VISION_GUARD_NAME,
                          role="safety", template=GUARD_CHAT_TEMPLATE)  # fmt: skip
    text = root / TEXT_GUARD_NAME
    _write_llama(text, seed + 7, GUARD_CHAT_TEMPLATE)
    write_manifest(text, TEXT_GUARD_NAME, "safety", "LlamaForCausalLM", demo=True)
    return [vision, text]


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _normalise_json(folder: Path) -> None:
    """Drop run-dependent fields (library versions stay: they are the same per environment)."""
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "_name_or_path" in data:
            data.pop("_name_or_path")
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:  # pragma: no cover - convenience for `python -m appliance.build.tiny DIR`
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    for path in make_tiny(target):
        print(path)


if __name__ == "__main__":  # pragma: no cover
    main()
