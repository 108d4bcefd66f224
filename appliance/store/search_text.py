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
UNSPACED = re.compile(
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
WORD_MASK = _MaskTable()


def fold(text: str) -> str:
    return text.translate(_FOLD)


def _runs(word: str) -> Iterator[tuple[str, bool]]:
    """(part, unspaced) pieces of one folded word."""
    if word.isascii() or not UNSPACED.search(word):
        yield word[:MAX_TOKEN_CHARS], False
        return
    last = 0
    for match in UNSPACED.finditer(word):
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
    if not UNSPACED.search(folded):  # most text: the words as they are, at C speed
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
    return bool(UNSPACED.fullmatch(word))


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
