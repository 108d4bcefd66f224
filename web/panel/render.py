"""Model output to safe HTML (a small Markdown subset) and result exports (txt, json, csv).

Model text is untrusted: everything is HTML-escaped first and only our own tags are added.
The subset is what the presets produce: headings, paragraphs, lists, fenced code, pipe tables,
`code`, **bold** and *italic*. Links are left as text on purpose: the box is offline, and a
clickable URL in a model's answer is a phishing vector, not a feature.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from markupsafe import Markup, escape

_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
]


def _inline(text: str) -> str:
    out = str(escape(text))
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


def _is_row(line: str) -> bool:
    return "|" in line.strip()


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{_inline(c)}</td>" for c in (row + [""] * len(header))[: len(header)])
        + "</tr>"
        for row in rows
    )
    return f'<table class="md-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def markdown(text: str) -> Markup:
    """Safe HTML for `text` (escaped, then a small Markdown subset)."""
    lines = (text or "").replace("\r\n", "\n").split("\n")
    html: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            html.append("<p>" + "<br>".join(_inline(p) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            html.append(f"<pre><code>{escape(chr(10).join(block))}</code></pre>")
            i += 1
            continue
        if _is_row(line) and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
            flush()
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and _is_row(lines[i]) and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            html.append(_table(header, rows))
            continue
        if match := _HEADING.match(line):
            flush()
            level = min(len(match.group(1)) + 2, 6)  # page headings own h1/h2
            html.append(f"<h{level}>{_inline(match.group(2))}</h{level}>")
        elif _BULLET.match(line) or _NUMBERED.match(line):
            flush()
            tag, pattern = ("ul", _BULLET) if _BULLET.match(line) else ("ol", _NUMBERED)
            items = []
            while i < len(lines) and (m := pattern.match(lines[i])):
                items.append(f"<li>{_inline(m.group(1))}</li>")
                i += 1
            html.append(f"<{tag}>{''.join(items)}</{tag}>")
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return Markup("".join(html))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _csv_cell(value: Any) -> str:
    text = value if isinstance(value, str) else ("" if value is None else json.dumps(value))
    # A cell starting with = + - @ is a formula to Excel/LibreOffice (CSV injection): a model
    # that read "=HYPERLINK(...)" off a photo must not get it executed on the clerk's PC.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def extract_csv(pages: list[dict[str, Any]], fields: list[str]) -> str:
    """One row per page: `page` then each requested field (the extract task's `data`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["page", *fields])
    for page in pages:
        data = page.get("data") if isinstance(page.get("data"), dict) else {}
        writer.writerow([page.get("page"), *(_csv_cell(data.get(f)) for f in fields)])
    return out.getvalue()
