"""Vision throughput: prefill ms, decode tokens/s, images/s and peak memory per batch size,
and static vs continuous batching on a mixed workload (tokens/s, rows/s, peak memory).

On a CUDA box it builds the full Llama 3.2 11B Vision architecture with random bf16 weights
straight on the GPU (no download: the figures depend on shapes, not on trained values) and runs
it through `VisionEngine`, unquantized and with each weight-only quantization. Without CUDA it
runs the same measurements on the tiny model, loaded with `VisionEngine.load` like real weights.

    python bench/gpu_vision.py [--batches 1,4,8] [--new-tokens 32] [--repeats 3] [--modes ...]

The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.build.tiny import VISION_NAME, make_tiny  # noqa: E402
from appliance.engines.vision import GenParams, VisionEngine, quantization_config  # noqa: E402


def full_config(image_token_index: int):  # -> MllamaConfig
    """meta-llama/Llama-3.2-11B-Vision-Instruct's architecture, written out."""
    from transformers import MllamaConfig

    from appliance.build.tiny import LLAMA3_ROPE

    return MllamaConfig(
        vision_config=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_global_layers=8,
            attention_heads=16,
            image_size=560,
            patch_size=14,
            max_num_tiles=4,
            intermediate_layers_indices=[3, 7, 15, 23, 30],
            vision_output_dim=7680,
            norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=40,
            num_attention_heads=32,
            num_key_value_heads=8,
            cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
            max_position_embeddings=131072,
            **LLAMA3_ROPE,
            rms_norm_eps=1e-5,
        ),
        image_token_index=image_token_index,
    )


def full_engine(tiny_dir: Path, mode: str, device: torch.device) -> VisionEngine:
    from torchao.quantization import quantize_
    from transformers import AutoProcessor, MllamaForConditionalGeneration
    from transformers.models.mllama import MllamaImageProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    # The real checkpoint's image processor: 560 px tiles, up to 4 of them.
    processor.image_processor = MllamaImageProcessor(
        size={"height": 560, "width": 560}, max_image_tiles=4
    )
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    with device:
        model = MllamaForConditionalGeneration._from_config(
            full_config(image_id), dtype=torch.bfloat16
        )
    model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    qconf = quantization_config("none" if mode == "bf16" else mode, device)
    if qconf is not None:
        quantize_(model, qconf.quant_type)
    return VisionEngine(model, processor, name="llama-3.2-11b-vision (random)", device=device)


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(size[1]):
        draw.line([(0, y), (size[0], y)], fill=(y * 255 // size[1], (seed * 50) % 255, 180))
    draw.ellipse([40 + seed * 20, 40, 240 + seed * 20, 240], fill=(250, 200, 40))
    return image


def peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(
    engine: VisionEngine, batches: list[int], new_tokens: int, size: tuple[int, int], repeats: int
) -> Iterator[dict[str, float]]:
    """Median of `repeats` runs per batch size: shared CPUs and GPU clocks make single runs noisy."""
    prompt = "Describe this image for a screen reader user."
    engine.generate_batch([photo(0, size)], [prompt], GenParams(max_new_tokens=2))  # warm-up
    for batch in batches:
        images = [photo(i, size) for i in range(batch)]
        params = GenParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            gens = engine.generate_batch(images, [prompt] * batch, params)
            runs.append((time.perf_counter() - start, gens[0].timings))
        runs.sort(key=lambda run: run[0])
        wall, t = runs[len(runs) // 2]
        yield {
            "batch": batch,
            "new_tokens": new_tokens,
            "preprocess_ms": round(t["preprocess_ms"], 2),
            "prefill_ms": round(t["prefill_ms"], 2),
            # All rows decode together: batch throughput is rows x per-row rate.
            "decode_tok_s": round(t["tokens_per_s"] * batch, 1),
            "images_per_s": round(batch / wall, 3),
            "peak_mem_gb": round(peak_mem_gb(engine.device), 3),
        }


def compare_batching(
    engine: VisionEngine, size: tuple[int, int], rows: int = 16, max_rows: int = 8
) -> dict[str, dict[str, float]]:
    """Static vs continuous batching on one mixed workload, in-process on the in-flight batch:
    short captions (16 tokens) and long OCR-like rows (128), a new row every 4 steps after a
    backlog of `max_rows`. Tokens/s, rows/s and peak memory per mode."""
    from appliance.engines.inflight import RowRequest

    prompt = "Transcribe all text in this image."
    out = {}
    for mode in ("static", "continuous"):
        plan = [16 if i % 3 else 128 for i in range(rows)]
        batch = engine.inflight(max_rows, static=mode == "static")
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        pending = [
            RowRequest(photo(i, size), prompt, GenParams(max_new_tokens=n, min_new_tokens=n), i)
            for i, n in enumerate(plan)
        ]
        for req in pending[:max_rows]:
            batch.add(req)
        pending = pending[max_rows:]
        tokens, step = 0, 0
        start = time.perf_counter()
        while batch.busy or pending:
            if pending and step % 4 == 0:
                batch.add(pending.pop(0))
            for done in batch.step():
                tokens += len(done.generation.token_ids) if done.generation else 0
            step += 1
        wall = time.perf_counter() - start
        out[mode] = {
            "tokens_per_s": round(tokens / wall, 1),
            "rows_per_s": round(rows / wall, 3),
            "peak_mem_gb": round(peak_mem_gb(engine.device), 3),
        }
        print(f"batching {mode}: {out[mode]}", flush=True)
    out["continuous_speedup"] = {
        "tokens_per_s": round(out["continuous"]["tokens_per_s"] / out["static"]["tokens_per_s"], 3)
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=None, help="default: bf16,int8,int4 (fp32,... on CPU)")
    parser.add_argument(
        "--batching-rows", type=int, default=16, help="rows of the static vs continuous run"
    )
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    base = "bf16" if cuda else "fp32"
    modes = args.modes.split(",") if args.modes else [base, "int8", "int4"]

    results = []
    batching: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = make_tiny(Path(tmp))[0]
        for mode in modes:
            if cuda:
                engine = full_engine(tiny_dir, mode, device)
                size = (1024, 768)
            else:
                quant = "none" if mode in ("fp32", "bf16") else mode
                engine = VisionEngine.load(tiny_dir, device="cpu", quantization=quant)
                size = (640, 480)
            for row in measure(engine, batches, args.new_tokens, size, args.repeats):
                row = {"mode": mode, **row}
                print(
                    f"{mode:5} batch {row['batch']}: prefill {row['prefill_ms']} ms, "
                    f"decode {row['decode_tok_s']} tok/s, {row['images_per_s']} img/s, "
                    f"peak {row['peak_mem_gb']} GB",
                    flush=True,
                )
                results.append(row)
            if mode == modes[0] and args.batching_rows:  # unquantized: the comparison
                batching = compare_batching(engine, size, args.batching_rows)
            del engine
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()

    summary = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": "llama-3.2-11b-vision-architecture (random bf16)" if cuda else VISION_NAME,
        "torch": torch.__version__,
        "results": results,
        "batching": batching,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
