"""Captions to word ids: tokenisation, vocabulary, padding and truncation.

Follows the original preprocessing (``code/datasets.py``, reference section 3.2-3.3): lowercase, ``\\w+``
tokens, non-ASCII characters dropped from each token, empty tokens dropped. Unlike the original, words that
are not in the vocabulary are *reported* (so a user sees that "purple" was ignored) and a caption with no
known word is an error instead of a crash in ``pack_padded_sequence``.

Layer 0: standard library and numpy only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text, checked_digest, with_digest
from .errors import DataError

__all__ = ["END_TOKEN", "tokenize", "Vocabulary", "EncodedCaption", "encode_caption"]

END_TOKEN = "<end>"  # index 0: end of caption and padding

_WORD_RE = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase ``\\w+`` tokens, ASCII-folded by dropping non-ASCII characters ('café' -> 'caf')."""
    text = text.replace("\ufffd\ufffd", " ").lower()
    tokens = (t.encode("ascii", "ignore").decode("ascii") for t in _WORD_RE.findall(text))
    return [t for t in tokens if t]


def has_words(text: str) -> bool:
    """Whether ``text`` has a token before ASCII folding: the original skipped (and did not count) caption
    lines without one, but kept lines whose tokens are all non-ASCII, as empty captions."""
    return bool(_WORD_RE.search(text.replace("\ufffd\ufffd", " ").lower()))


class Vocabulary:
    """Word <-> index map. Index 0 is ``'<end>'``, which also pads captions."""

    def __init__(self, itos: Sequence[str]):
        itos = [str(w) for w in itos]
        if not itos or itos[0] != END_TOKEN:
            raise DataError(
                f"a vocabulary must start with {END_TOKEN!r} at index 0, got {itos[:1]!r}; "
                "rebuild it with Vocabulary.build or load a vocab.json written by attngan"
            )
        stoi: dict[str, int] = {}
        for i, w in enumerate(itos):
            if w in stoi:
                raise DataError(f"the vocabulary lists the word {w!r} twice (indices {stoi[w]} and {i})")
            stoi[w] = i
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = stoi

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """Vocabulary of the words seen ``min_count`` times or more.

        Deterministic, unlike the original (whose order came from Python 2 dict hashing): ``'<end>'``, then
        by descending count, ties in alphabetical order.
        """
        counts = Counter(t for tokens in token_lists for t in tokens)
        counts.pop(END_TOKEN, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([END_TOKEN, *words])

    @classmethod
    def from_original(
        cls, ixtoword: Mapping[int, str] | Sequence[str], wordtoix: Mapping[str, int] | None = None
    ) -> Vocabulary:
        """From the original ``captions.pickle`` maps, keeping every index unchanged.

        ``ixtoword`` is a dict ``{index: word}`` (the original) or a list; ``wordtoix``, when given, must agree.
        Python 2 pickles may hold ``bytes``: they are decoded as UTF-8.
        """

        def as_str(w: object) -> str:
            return w.decode("utf-8") if isinstance(w, bytes) else str(w)

        if isinstance(ixtoword, Mapping):
            n = len(ixtoword)
            missing = [i for i in range(n) if i not in ixtoword]
            if missing:
                raise DataError(
                    f"ixtoword has {n} entries but lacks the indices {missing[:5]}...; "
                    "indices must run from 0 to n-1 without gaps"
                )
            itos = [as_str(ixtoword[i]) for i in range(n)]
        else:
            itos = [as_str(w) for w in ixtoword]
        vocab = cls(itos)
        if wordtoix is not None:
            for w, i in wordtoix.items():
                w = as_str(w)
                if vocab.stoi.get(w) != int(i):
                    raise DataError(
                        f"ixtoword and wordtoix disagree on {w!r} ({vocab.stoi.get(w)} vs {i}); "
                        "the captions.pickle file is inconsistent"
                    )
            if len(wordtoix) != len(vocab):
                raise DataError(f"wordtoix has {len(wordtoix)} words but ixtoword has {len(vocab)}")
        return vocab

    def encode(self, tokens: Iterable[str]) -> tuple[list[int], list[str]]:
        """Ids of the known tokens (order kept) and the unknown tokens (unique, first-seen order)."""
        ids: list[int] = []
        unknown: list[str] = []
        for t in tokens:
            i = self.stoi.get(t)
            if i is None or i == 0:
                if t not in unknown:
                    unknown.append(t)
            else:
                ids.append(i)
        return ids, unknown

    @property
    def words(self) -> list[str]:
        """The known words, in index order (without ``'<end>'``)."""
        return [w for i, w in enumerate(self.itos) if i != 0]

    def closest(self, word: str, n: int = 3) -> list[str]:
        """Up to ``n`` known words spelled most like ``word`` (difflib's ratio >= 0.6), best first."""
        return difflib.get_close_matches(word.lower(), self.words, n=n)

    def suggestions(self, unknown: Iterable[str]) -> str:
        """``'purpel' -> purple; 'sqare' -> square, share`` for the unknown words that resemble known ones
        ('' if none does)."""
        parts = [f"{w!r} -> {', '.join(close)}" for w in unknown if (close := self.closest(w))]
        return "; ".join(parts)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids``, stopping at the first 0 (``'<end>'`` / padding)."""
        words = []
        for i in ids:
            i = int(i)
            if i == 0:
                break
            words.append(self.itos[i])
        return words

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``{"itos": [...]}`` as readable JSON, atomically (temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(with_digest({"itos": self.itos}), indent=1, ensure_ascii=False) + "\n"
        atomic_write_text(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a file written by :meth:`save` (a bare JSON list of words is accepted too)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"vocabulary file {path} does not exist; pass the vocab.json of a trained model")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"vocabulary file {path} is not readable JSON ({exc}); the file is corrupt"
            ) from exc
        data = checked_digest(data, path)
        itos = data.get("itos") if isinstance(data, dict) else data
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise DataError(f"vocabulary file {path} has no list of words under 'itos'; the file is corrupt")
        return cls(itos)


@dataclass(frozen=True)
class EncodedCaption:
    """A caption as word ids. Unpacks as ``ids, length, unknown = encode_caption(...)``.

    ``tokens`` are the words behind ``ids`` (after dropping unknown words and truncation), for labels of
    attention maps.
    """

    ids: list[int]
    length: int
    unknown: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.ids, self.length, self.unknown))


def truncate_ids(
    ids: Sequence[int], max_words: int, truncate: str = "first", rng: np.random.Generator | None = None
) -> list[int]:
    """Keep at most ``max_words`` positions: the first ones, or (``"random"``, the original's
    ``get_caption``) ``max_words`` positions drawn without replacement, kept in their order."""
    ids = list(ids)
    if len(ids) <= max_words:
        return ids
    if truncate == "first":
        return ids[:max_words]
    if truncate == "random":
        rng = np.random.default_rng() if rng is None else rng
        keep = np.sort(rng.choice(len(ids), size=max_words, replace=False))
        return [ids[i] for i in keep]
    raise ValueError(f"truncate must be 'first' or 'random', got {truncate!r}")


def encode_caption(
    text: str,
    vocab: Vocabulary,
    max_words: int,
    truncate: str = "first",
    rng: np.random.Generator | None = None,
) -> EncodedCaption:
    """Tokenise, map to ids (unknown words dropped and reported as written) and truncate to ``max_words``.

    ``rng`` drives ``truncate="random"``; without one, a fresh unseeded generator is used.
    Raises ``DataError`` if no known word is left.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    if truncate not in ("first", "random"):
        raise ValueError(f"truncate must be 'first' or 'random', got {truncate!r}")
    tokens = tokenize(text)
    known = [t for t in tokens if vocab.stoi.get(t, 0) != 0]
    ids, _ = vocab.encode(tokens)
    # Unknown words as written (ASCII folding turns 'rèd' into 'rd' and drops '中心' entirely).
    unknown: list[str] = []
    for raw in _WORD_RE.findall(text.replace("\ufffd\ufffd", " ").lower()):
        folded = raw.encode("ascii", "ignore").decode("ascii")
        if vocab.stoi.get(folded, 0) == 0 and raw not in unknown:
            unknown.append(raw)
    if not ids:
        shown = text if len(text) <= 80 else text[:77] + "..."
        detail = f"unknown words: {', '.join(unknown)}" if unknown else "it has no words at all"
        close = vocab.suggestions(unknown)
        raise DataError(
            f"caption {shown!r} has no word in the vocabulary ({detail}); rephrase it with words the model was "
            f"trained on" + (f" (closest known words: {close})" if close else "")
            + f"; its {len(vocab) - 1} words: `attngan sample --checkpoint MODEL --list-words`"
        )
    if len(ids) > max_words:
        positions = truncate_ids(range(len(ids)), max_words, truncate, rng)
        ids = [ids[p] for p in positions]
        known = [known[p] for p in positions]
    return EncodedCaption(ids=ids, length=len(ids), unknown=unknown, tokens=known)
