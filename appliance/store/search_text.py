"""Search text: one tokenizer for documents and queries, on SQLite and PostgreSQL alike.

Both databases get text that Python has already cut into words, so the same query finds the
same jobs on either, and the panel highlights exactly what matched:

- `fold`: compatibility-decompose (NFKD), drop the Latin/Greek/Cyrillic combining accents
  (U+0300-U+036F, so "cafe" finds "café" and "Größe" equals "grösse"/"GROSSE"), case-fold,
  and turn everything that is not a letter, mark or digit into a space. Devanagari and Thai
  vowel signs and viramas are marks of their own blocks and are kept: dropping them would
  merge different Hindi or Thai words.
- Words are the runs between spaces. Scripts written without spaces between words (Thai,
  Lao, Khmer, Myanmar, Tibetan, Chinese, Japanese kana) have no word boundaries to find, so
  their runs are indexed as overlapping character trigrams (SQLite's `trigram` tokenizer
  does the same): a query word of 3+ characters is the phrase of its trigrams, i.e. a
  substring search, and a shorter one is a prefix of a trigram.

A query is a list of clauses, all of which must match: `word`, `prefix*` and `"a phrase"`
(its last word may end in `*`). Malformed queries raise `InvalidRequest`, never reach SQL.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.errors import InvalidRequest

MAX_QUERY_CHARS = 500
MAX_CLAUSES = 16
# Longer "words" (base64 blobs, runs of digits) are cut; queries are cut the same way.
MAX_TOKEN_CHARS = 64
_NGRAM = 3

# Scripts that do not separate words with spaces (Unicode blocks).
_UNSPACED = re.compile(
    "["
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf\u3040-\u31ff"  # CJK radicals, kana, bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\U00020000-\U0002fa1f"
    "]+"
)


def _fold_char(char: str) -> str:
    out = []
    for part in unicodedata.normalize("NFKD", char):
        if "\u0300" <= part <= "\u036f":
            continue
        out.append(part.casefold() if unicodedata.category(part)[0] in "LMN" else " ")
    return "".join(out)


class _FoldTable(dict[int, str]):
    """A `str.translate` table filled on first sight of each character: the fold then runs
    at C speed (ingest folds every result written)."""

    def __missing__(self, code: int) -> str:
        value = self[code] = _fold_char(chr(code))
        return value


class _MaskTable(dict[int, str]):
    """Maps a word character to "w" and anything else to " ": word spans in the original."""

    def __missing__(self, code: int) -> str:
        value = self[code] = "w" if unicodedata.category(chr(code))[0] in "LMN" else " "
        return value


_FOLD = _FoldTable()
_MASK = _MaskTable()


def fold(text: str) -> str:
    return text.translate(_FOLD)


def _runs(word: str) -> Iterator[tuple[str, bool]]:
    """(part, unspaced) pieces of one folded word."""
    if word.isascii() or not _UNSPACED.search(word):
        yield word[:MAX_TOKEN_CHARS], False
        return
    last = 0
    for match in _UNSPACED.finditer(word):
        if match.start() > last:
            yield word[last : match.start()][:MAX_TOKEN_CHARS], False
        yield match.group(), True
        last = match.end()
    if last < len(word):
        yield word[last:][:MAX_TOKEN_CHARS], False


def words(text: str) -> list[str]:
    """The folded words of `text`; runs of unspaced scripts are separate words."""
    return [part for word in fold(text).split() for part, _ in _runs(word)]


def index_tokens(text: str) -> list[str]:
    """What the index stores for `text`, in order: words, and trigrams of unspaced runs."""
    folded = fold(text)
    if not _UNSPACED.search(folded):  # most text: the words as they are, at C speed
        return [w if len(w) <= MAX_TOKEN_CHARS else w[:MAX_TOKEN_CHARS] for w in folded.split()]
    out: list[str] = []
    for word in folded.split():
        for part, unspaced in _runs(word):
            if unspaced:
                out.extend(part[i : i + _NGRAM] for i in range(len(part)))
            else:
                out.append(part)
    return out


def is_unspaced(word: str) -> bool:
    return bool(_UNSPACED.fullmatch(word))


@dataclass(frozen=True)
class Clause:
    """Folded words that must occur in this order (one word: anywhere); `prefix`: the last
    one may continue."""

    words: tuple[str, ...]
    prefix: bool = False

    def tokens(self) -> tuple[list[str], bool]:
        """The index tokens this clause is the phrase of, and whether the last is a prefix."""
        out: list[str] = []
        prefix = self.prefix
        for i, word in enumerate(self.words):
            last = i == len(self.words) - 1
            if not is_unspaced(word):
                out.append(word)
            elif not last:  # a space follows in the document too: the run ends with it
                out.extend(word[j : j + _NGRAM] for j in range(len(word)))
            elif len(word) >= _NGRAM:  # a substring: its whole trigrams, consecutive
                out.extend(word[j : j + _NGRAM] for j in range(len(word) - _NGRAM + 1))
                prefix = False
            else:  # too short for a trigram: the start of one
                out.append(word)
                prefix = True
        return out, prefix


@dataclass(frozen=True)
class SearchQuery:
    text: str
    clauses: tuple[Clause, ...]

    def phrase(self) -> Clause | None:
        """All the words in the order typed, as one phrase: a job containing it ranks first.
        None for a single clause, or when the words cannot be adjacent in the index."""
        if len(self.clauses) < 2 or any(c.prefix for c in self.clauses[:-1]):
            return None
        joined = tuple(w for c in self.clauses for w in c.words)
        if any(is_unspaced(w) for w in joined):
            return None
        return Clause(joined, self.clauses[-1].prefix)


_PHRASE = re.compile(r'"([^"]*)"')


def parse_query(text: str) -> SearchQuery:
    """`invoice 2024`, `invoi*`, `"blue house"`, `"net tot*"`; every clause must match."""
    text = text.strip()
    if not text:
        raise InvalidRequest("the search is empty: type a word")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"the search is longer than {MAX_QUERY_CHARS} characters")
    if text.count('"') % 2:
        raise InvalidRequest('unbalanced quote in the search: close every "phrase"')
    clauses: list[Clause] = []
    last = 0
    for match in _PHRASE.finditer(text):
        clauses += _bare(text[last : match.start()])
        clauses += _clause(match.group(1), phrase=True)
        last = match.end()
    clauses += _bare(text[last:])
    if not clauses:
        raise InvalidRequest("nothing to search for: type a word (punctuation is ignored)")
    if len(clauses) > MAX_CLAUSES:
        raise InvalidRequest(f"at most {MAX_CLAUSES} words or phrases per search")
    return SearchQuery(text, tuple(clauses))


def _bare(text: str) -> list[Clause]:
    return [c for raw in text.split() for c in _clause(raw, phrase=False)]


def _clause(raw: str, *, phrase: bool) -> list[Clause]:
    stripped = raw.rstrip()
    prefix = stripped.endswith("*")
    body = stripped[:-1] if prefix else stripped
    if "*" in body:
        raise InvalidRequest("a * only ends a word, for a prefix search: invoi*")
    found = tuple(words(body))
    if not found:
        if prefix:
            raise InvalidRequest("a * needs a word before it: invoi*")
        return []  # only punctuation: nothing to look for, like a search engine
    if prefix and len(found[-1]) < 2:
        raise InvalidRequest("a prefix search needs at least 2 characters before the *")
    if not prefix and is_unspaced(found[-1]) and len(found[-1]) < 2 and len(found) == 1:
        raise InvalidRequest("a Thai, Chinese or Japanese search needs at least 2 characters")
    # A bare word that the tokenizer cuts ("invoice-2024") is the phrase of its parts.
    return [Clause(found, prefix)]


# -- highlighting ----------------------------------------------------------------------------


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
    for match in re.finditer("w+", text.translate(_MASK)):
        start, end = match.span()
        folded = fold(text[start:end])
        if len(folded) != end - start or " " in folded:  # ß -> ss, ligatures: share the span
            for part in words(text[start:end]):
                yield _Word(start, end, part, False)
        else:
            yield from _split_exact(start, folded)


def _split_exact(start: int, folded: str) -> Iterator[_Word]:
    """One folded word at `start`, cut where an unspaced-script run begins or ends."""
    if folded.isascii() or not _UNSPACED.search(folded):
        yield _Word(start, start + len(folded), folded, True)
        return
    last = 0
    for run in _UNSPACED.finditer(folded):
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
