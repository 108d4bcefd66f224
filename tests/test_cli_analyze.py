"""`appliance analyze` as a user runs it: a real subprocess, real tiny models, real files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


def _page(color: tuple[int, int, int], text: str) -> Image.Image:
    img = Image.new("RGB", (300, 400), color)
    ImageDraw.Draw(img).text((20, 20), text, fill=(0, 0, 0))
    return img


def _pdf(path: Path, pages: int) -> Path:
    imgs = [_page((250, 250 - 40 * i, 200), f"page {i + 1}") for i in range(pages)]
    buf = io.BytesIO()
    imgs[0].save(buf, "PDF", save_all=True, append_images=imgs[1:])
    path.write_bytes(buf.getvalue())
    return path


def _jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    _page((30, 120, 200), "photo").save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return path


def _run(args: list[str], models: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "APPLIANCE_MODELS_DIR": str(models),
        "APPLIANCE_DATA_DIR": str(tmp_path / "data"),
        "APPLIANCE_CONFIG_FILE": str(tmp_path / "absent.toml"),
        "APPLIANCE_GENERATION__MAX_NEW_TOKENS": "6",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "analyze", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_pdf_pages_and_summary_and_a_corrupt_file(tiny_models_dir: Path, tmp_path: Path) -> None:
    pdf = _pdf(tmp_path / "scan.pdf", 3)
    good = _jpeg(tmp_path / "photo.jpg")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good.read_bytes()[:300])

    proc = _run([str(pdf), str(bad), str(good), "--summarize", "--json"], tiny_models_dir, tmp_path)

    assert proc.returncode == 1, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["file"]).name for r in results] == ["scan.pdf", "photo.jpg"]
    assert [p["page"] for p in results[0]["pages"]] == [1, 2, 3]
    assert all(p["text"].strip() for r in results for p in r["pages"])
    assert all(r["summary"] and r["summary"].strip() for r in results)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_three_page_pdf_plain_output(tiny_models_dir: Path, tmp_path: Path) -> None:
    pdf = _pdf(tmp_path / "scan.pdf", 3)
    proc = _run([str(pdf), "--summarize"], tiny_models_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith(" ")]
    assert [ln.split(":")[0] for ln in lines] == [
        f"{pdf} [page 1/3]",
        f"{pdf} [page 2/3]",
        f"{pdf} [page 3/3]",
        f"{pdf} [summary]",
    ]


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    _page((30, 120, 200), "photo").save(buf, "JPEG", quality=90)
    return buf.getvalue()[:400]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is a text file\n" * 20, "not an image"),
        (_truncated_jpeg(), "jpeg"),
    ],
)
def test_bad_file_alone_exits_nonzero_with_one_line(
    tiny_models_dir: Path, tmp_path: Path, content: bytes, reason: str
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    proc = _run([str(bad)], tiny_models_dir, tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:"), proc.stderr
    assert reason in lines[0].lower()


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    img = _jpeg(tmp_path / "photo.jpg")
    proc = _run([str(img)], tmp_path / "no-models-here", tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no-models-here" in lines[0]
