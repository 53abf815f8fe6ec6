"""Text to token ids: the tokenizer, a deterministic vocabulary and fixed-length encoding.

Used by the ``imdb_reviews`` catalog domain and the code-built text domains
(:mod:`da_framework.data.text_synthetic`).  Ids 0 (:data:`PAD_ID`) and 1 (:data:`OOV_ID`) are
reserved.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from da_framework.data.domain import RandomAccessSource, Record, iterate_records
from da_framework.errors import UserError

PAD_ID, OOV_ID = 0, 1

_WORD = re.compile(r"[a-z0-9]+")


def _as_str(text: Any) -> str:
    if isinstance(text, np.ndarray):
        text = text.item()
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def tokenize(text: str | bytes) -> list[str]:
    """Lowercases ``text`` and splits it on every run of non-[a-z0-9] characters.

    >>> tokenize("It's GREAT, 10/10!")
    ['it', 's', 'great', '10', '10']
    """
    return _WORD.findall(_as_str(text).lower())


def build_vocabulary(texts: Iterable[str | bytes], size: int) -> dict[str, int]:
    """Builds a word -> id vocabulary with ids in ``[0, size)``, deterministically.

    Ids 0 (:data:`PAD_ID`) and 1 (:data:`OOV_ID`) are reserved; the ``size - 2`` most
    frequent words (by token count over ``texts``, ties broken alphabetically) get ids
    2, 3, ... in that order.  The result depends only on the multiset of texts.
    """
    if size < 2:
        raise UserError(f"vocabulary size must be >= 2 (pad and OOV ids), got {size}")
    counts = collections.Counter(w for t in texts for w in tokenize(t))
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[: size - 2]
    return {w: i + 2 for i, (w, _) in enumerate(ranked)}


def encode(text: str | bytes, vocab: Mapping[str, int], length: int) -> np.ndarray:
    """Token ids of ``text``: int32 ``(length,)``, truncated or 0-padded at the end.

    Words missing from ``vocab`` get :data:`OOV_ID` (1).
    """
    ids = [vocab.get(w, OOV_ID) for w in tokenize(text)[:length]]
    out = np.full((length,), PAD_ID, dtype=np.int32)
    out[: len(ids)] = ids
    return out


class TextEncoder:
    """Per-record function of text domains, with a vocabulary built lazily, once.

    Attributes:
      corpus: the source whose ``"text"`` fields build the vocabulary.
      size: number of token ids (vocabulary words + 2).
      length: fixed number of token ids per record.
    """

    def __init__(self, corpus: RandomAccessSource, size: int, length: int) -> None:
        self.corpus, self.size, self.length = corpus, size, length

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        """The word -> id vocabulary of the corpus (built on first access)."""
        return build_vocabulary((r["text"] for r in iterate_records(self.corpus)), self.size)

    def __call__(self, record: Record) -> Record:
        """Maps a tfds ``{"text", "label"}`` record to int32 token ids and label."""
        return {
            "text": encode(record["text"], self.vocab, self.length),
            "label": np.int32(record["label"]),
        }
