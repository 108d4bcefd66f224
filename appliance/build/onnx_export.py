"""Export a local Llama summarizer to ONNX (with KV cache) for onnxruntime."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from appliance.errors import ModelError
from appliance.registry import MANIFEST, offline, read_manifest, write_manifest

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def export_onnx(src: Path, dst: Path, *, write_manifests: bool = True) -> Path:
    """Export `src` (a causal LM folder) to `dst`; return `dst`.

    With `dst` inside `src` (the usual `src/onnx`), `src`'s manifest is rewritten so that it lists
    the new files; otherwise `dst` becomes a model folder of its own with its own manifest.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise ModelError(f"export-onnx: {src} is not a model folder (no config.json)")
    import torch
    from optimum.exporters.onnx import main_export

    if src.resolve() == dst.resolve() or src.resolve().is_relative_to(dst.resolve()):
        raise ModelError(f"export-onnx: {dst} would overwrite the source model {src}")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    with offline(), warnings.catch_warnings():
        # Tracing a decoder always warns about Python bools and index ops; none is actionable.
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            main_export(
                str(src),
                output=dst,
                task="text-generation-with-past",
                local_files_only=True,
                do_validation=False,
            )
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ModelError(
                f"export-onnx: cannot export {src}: {' '.join(str(err).split())[:300]}"
            ) from None
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy2(src / name, dst / name)
    if write_manifests:
        _update_manifests(src, dst)
    return dst


def _update_manifests(src: Path, dst: Path) -> None:
    base = read_manifest(src) if (src / MANIFEST).is_file() else None
    name = base.name if base else src.name
    if dst.resolve().is_relative_to(src.resolve()):
        role = base.role if base else "summarizer"
        arch = base.architecture if base else "LlamaForCausalLM"
        write_manifest(src, name, role, arch)
    else:
        write_manifest(dst, f"{name}-onnx", base.role if base else "summarizer", "onnx")
