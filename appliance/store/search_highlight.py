"""Where a search matched in a text, for highlighting: the same folding and words as the
index (`search_text`), so what is marked is what matched."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.store.search_text import (
    MAX_TOKEN_CHARS,
    UNSPACED,
    WORD_MASK,
    Clause,
    SearchQuery,
    fold,
    is_unspaced,
    words,
)


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str  # folded
    exact: bool  # text[i] is the fold of the original character at start + i


def _words_at(text: str) -> Iterator[_Word]:
    """Every folded word of `text` with where it stands in the original."""
    folded_all = fold(text)
    if len(folded_all) == len(text):  # the usual case: one folded character per character
        for match in re.finditer(r"\S+", folded_all):
            yield from _split_exact(match.start(), match.group())
        return
    for match in re.finditer("w+", text.translate(WORD_MASK)):
        start, end = match.span()
        folded = fold(text[start:end])
        if len(folded) != end - start or " " in folded:  # ß -> ss, ligatures: share the span
            for part in words(text[start:end]):
                yield _Word(start, end, part, False)
        else:
            yield from _split_exact(start, folded)


def _split_exact(start: int, folded: str) -> Iterator[_Word]:
    """One folded word at `start`, cut where an unspaced-script run begins or ends."""
    if folded.isascii() or not UNSPACED.search(folded):
        yield _Word(start, start + len(folded), folded, True)
        return
    last = 0
    for run in UNSPACED.finditer(folded):
        if run.start() > last:
            yield _Word(start + last, start + run.start(), folded[last : run.start()], True)
        yield _Word(start + run.start(), start + run.end(), run.group(), True)
        last = run.end()
    if last < len(folded):
        yield _Word(start + last, start + len(folded), folded[last:], True)


def locate(text: str, query: SearchQuery) -> int:
    """Where the first clause's first word first stands as a word (or, unspaced, at all) in
    `text`, cheaply: str.find on the folded text. -1 if nowhere, or when folding moved
    characters (then only `match_spans` can tell)."""
    folded = fold(text)
    if len(folded) != len(text):
        return -1
    best = -1
    for clause in query.clauses:
        want = clause.words[0]
        at = folded.find(want)
        while at >= 0 and not is_unspaced(want):
            end = at + len(want)
            starts = at == 0 or folded[at - 1] == " "
            if starts and (clause.prefix or end == len(folded) or folded[end] == " "):
                break
            at = folded.find(want, at + 1)
        if at >= 0 and (best < 0 or at < best):
            best = at
    return best


def match_spans(text: str, query: SearchQuery) -> list[tuple[int, int]]:
    """Character spans of `text` that match a clause of `query`, sorted, not overlapping."""
    found = list(_words_at(text))
    spans: list[tuple[int, int]] = []
    for clause in query.clauses:
        spans += _clause_spans(found, clause)
    return _merge(spans)


def _clause_spans(found: list[_Word], clause: Clause) -> Iterator[tuple[int, int]]:
    n = len(clause.words)
    if n == 1 and is_unspaced(clause.words[0]):  # a substring: mark just it when we can
        want = clause.words[0]
        for word in found:
            at = word.text.find(want)
            while at >= 0:
                if not word.exact:
                    yield word.start, word.end
                    break
                yield word.start + at, word.start + at + len(want)
                at = word.text.find(want, at + 1)
        return
    # Candidates by the first word in one pass, then the rest of the phrase checked.
    want = clause.words[0][:MAX_TOKEN_CHARS]
    if is_unspaced(want):
        heads = [i for i, w in enumerate(found) if want in w.text]
    elif clause.prefix and n == 1:
        heads = [i for i, w in enumerate(found) if w.text.startswith(want)]
    else:
        heads = [i for i, w in enumerate(found) if w.text[:MAX_TOKEN_CHARS] == want]
    for i in heads:
        if i + n <= len(found) and all(
            _word_matches(found[i + k].text, clause, k) for k in range(1, n)
        ):
            yield found[i].start, found[i + n - 1].end


def _word_matches(word: str, clause: Clause, k: int) -> bool:
    want = clause.words[k][:MAX_TOKEN_CHARS]
    word = word[:MAX_TOKEN_CHARS]
    if is_unspaced(want):
        return want in word
    if k == len(clause.words) - 1 and clause.prefix:
        return word.startswith(want)
    return word == want


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out
