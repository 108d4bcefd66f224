"""Hostile uploads: >= 1,000 malformed requests get a 4xx, the server keeps serving, and no
byte lands outside the data dir; hostile filenames never escape storage."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_fixtures import *  # noqa: F403
from tests.api_fixtures import auth, jpeg_bytes, make_settings
from web.uploads import safe_filename

HOSTILE_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "C:\\Windows\\system32\\x.jpg",
    "a\x00b.jpg",
    "x" * 4096 + ".jpg",
    "....//....//x.jpg",
    "\u202ecod.jpg",
    ".",
    "..",
    "",
    "\n\r\t.jpg",
    "%2e%2e%2fetc%2fpasswd",
]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a giant image over a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_filename_has_no_path(name: str) -> None:
    cleaned = safe_filename(name)
    assert cleaned and "/" not in cleaned and "\\" not in cleaned and "\x00" not in cleaned
    assert cleaned not in (".", "..") and len(cleaned) <= 200
    assert all(ch.isprintable() for ch in cleaned)


def test_hostile_filenames_never_escape_storage(
    tmp_path: Path, client: Any, tokens: dict[str, str], api_settings: Any
) -> None:
    before = _files_under(tmp_path)
    passwd = os.stat("/etc/passwd").st_mtime_ns
    # A CR/LF in a filename breaks the test client's own multipart encoding (the fuzz test
    # sends such bodies raw).
    names = [n for n in HOSTILE_NAMES if "\n" not in n]
    files = [(io.BytesIO(jpeg_bytes(colour=(i, 9, 9))), name) for i, name in enumerate(names)]
    resp = client.post("/api/v1/jobs", headers=auth(tokens["submit"]), data={"file": files})
    assert resp.status_code == 201, resp.json
    for job in resp.json["jobs"]:
        name = job["filename"]
        assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) <= 200
    new = _files_under(tmp_path) - before
    assert new, "the uploads were stored somewhere"
    data_dir = api_settings.data_dir.resolve()
    for path in new:
        assert path.resolve().is_relative_to(data_dir), path
    assert os.stat("/etc/passwd").st_mtime_ns == passwd
    assert not (tmp_path / "etc").exists() and not Path("etc/passwd").exists()


# --- fuzz -----------------------------------------------------------------------------------

_JPEG = jpeg_bytes((320, 240))
_FIELD_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["caption", "question", "classify", "extract", "xx", "", "true", "maybe"]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
_CONTENT = st.one_of(
    st.binary(max_size=2048),
    st.just(b""),
    st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff\xe0" + b),  # JPEG magic, junk body
    st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=512).map(lambda b: b"%PDF-1.7\n" + b),
    st.binary(max_size=512).map(lambda b: b"II*\x00" + b),
    st.binary(max_size=256).map(lambda b: b"GIF89a" + b),
    # Truncated JPEGs: cut within the first half, so it is really damaged (a JPEG missing only
    # its end marker still decodes, and is rightly accepted).
    st.floats(0, 0.5).map(lambda f: _JPEG[: max(4, int(len(_JPEG) * f))]),
    st.tuples(st.integers(20_000, 200_000), st.integers(20_000, 200_000)).map(
        lambda wh: _png_bomb(*wh)
    ),
)


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    out = io.BytesIO()
    for name, filename, body in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass"))
        out.write(body + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


@st.composite
def malformed_requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["upload"] * 4 + ["multipart", "multipart", "raw", "json", "headers"])
    )
    headers: dict[str, str] = {}
    if kind == "upload":  # well-framed multipart, hostile content and fields
        parts = [("file", draw(st.sampled_from(HOSTILE_NAMES[:8])), draw(_CONTENT))]
        for _ in range(draw(st.integers(0, 3))):
            name = draw(
                st.sampled_from(
                    [
                        "file",
                        "task",
                        "labels",
                        "fields",
                        "language",
                        "summarize",
                        "priority",
                        "batch",
                        "prompt",
                    ]
                )
            )
            if name == "file":
                parts.append((name, "more.jpg", draw(_CONTENT)))
            else:
                parts.append((name, None, draw(_FIELD_VALUES).encode("utf-8", "surrogatepass")))
        body = _multipart(parts, "fuzzb0undary")
        content_type = "multipart/form-data; boundary=fuzzb0undary"
    elif kind == "multipart":
        boundary = draw(st.text("abcdefXYZ0123456789-_", min_size=1, max_size=70))
        parts = []
        for _ in range(draw(st.integers(0, 4))):
            name = draw(
                st.sampled_from(
                    ["file", "file", "task", "labels", "language", "priority", "batch", "x"]
                )
            )
            if name == "file":
                fname = draw(st.one_of(st.sampled_from(HOSTILE_NAMES[:8]), st.text(max_size=30)))
                fname = fname.replace('"', "").replace("\r", "").replace("\n", "")
                parts.append((name, fname, draw(_CONTENT)))
            else:
                value = draw(_FIELD_VALUES).encode("utf-8", "surrogatepass")
                parts.append((name, None, value))
        body = _multipart(parts, boundary)
        if draw(st.booleans()):  # cut it anywhere: an unterminated multipart body
            body = body[: draw(st.integers(0, len(body)))]
        declared = draw(st.sampled_from([boundary, boundary + "x", "", '"' + boundary]))
        content_type = f"multipart/form-data; boundary={declared}"
    elif kind == "raw":
        body = draw(st.binary(max_size=4096))
        content_type = draw(
            st.sampled_from(
                [
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "application/octet-stream",
                    "image/jpeg",
                    "text/plain",
                    "",
                    "multipart/mixed; boundary=zz",
                ]
            )
        )
    elif kind == "json":
        body = draw(st.binary(max_size=512).map(lambda b: b'{"file": "' + b + b'"}'))
        content_type = "application/json"
    else:  # absurd headers on an otherwise valid upload of a bomb
        body = _multipart([("file", "bomb.png", _png_bomb())], "b0undary")
        content_type = "multipart/form-data; boundary=b0undary"
        latin1 = st.characters(min_codepoint=32, max_codepoint=255)
        headers["Idempotency-Key"] = draw(
            st.text(latin1, min_size=201, max_size=20_000) | st.just("\x7f") | st.just(" ")
        )
        headers["X-Padding"] = "p" * draw(st.integers(0, 64_000))
    return {"body": body, "content_type": content_type, "headers": headers}


@pytest.fixture
def fuzz_app(tmp_path: Path, redis_server: str) -> Any:
    from web import create_app

    settings = make_settings(tmp_path, redis_server)
    settings.api.rate_limit_per_minute = 0
    settings.api.max_request_bytes = 1_000_000
    settings.limits.max_pixels = 4_000_000
    return create_app(settings)


def test_fuzzed_uploads_only_get_4xx(fuzz_app: Any, tmp_path: Path) -> None:
    client = fuzz_app.test_client()
    _info, secret = fuzz_app.extensions["appliance"].tokens.create("fuzzer", "submit")
    data_dir = fuzz_app.extensions["appliance"].settings.data_dir.resolve()
    before = _files_under(tmp_path)
    seen: dict[int, int] = {}

    @settings(
        max_examples=1100,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(malformed_requests())
    def one(req: dict[str, Any]) -> None:
        resp = client.post(
            "/api/v1/jobs",
            data=req["body"],
            headers={**auth(secret), **req["headers"]},
            content_type=req["content_type"],
        )
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data()[:300])
        assert resp.mimetype == "application/problem+json"

    one()
    print("fuzz status codes:", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 1000, seen
    # Still serving, and a good upload still works.
    assert client.get("/healthz").status_code == 200
    ok = client.post(
        "/api/v1/jobs", headers=auth(secret), data={"file": (io.BytesIO(jpeg_bytes()), "ok.jpg")}
    )
    assert ok.status_code == 201
    for path in _files_under(tmp_path) - before:
        assert path.resolve().is_relative_to(data_dir), path
