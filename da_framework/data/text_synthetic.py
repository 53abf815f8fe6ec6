"""A small synthetic sentiment domain pair, built by code: movie reviews -> product reviews.

Each example is a "sentence" of 12 to 30 words drawn, with fixed seeds, from word lists:

* filler words of the domain's style (movie words for ``text/source``, product words for
  ``text/target``: the two styles share only function words);
* 2 to 4 sentiment words of the example's class, each drawn from the sentiment words shared by
  both domains (``good``, ``awful``, ...) with probability 1/2, else from the domain's own
  sentiment words (``gripping``/``dull`` for movies, ``sturdy``/``flimsy`` for products);
* with probability 0.3 one sentiment word of the other class (a distractor);
* 5% of labels flipped.

Labels: 0 = negative, 1 = positive.  Words are shuffled within a sentence, lowercased and
encoded with :func:`da_framework.data.text.encode` over one fixed vocabulary of every word
list (ids 0 = padding, 1 = unknown, then the words in sorted order), to :data:`LENGTH`
int32 ids.  Each domain has :data:`NUM_EXAMPLES` examples cut 60/20/20 into
``train``/``val``/``test``; ``text/source`` uses ``default_rng(0)``, ``text/target``
``default_rng(1)``.
"""

from __future__ import annotations

import functools

import numpy as np

from da_framework.data.text import encode
from da_framework.data.domain import ArraySource, Domain
from da_framework.data.registry import register_domain
from da_framework.errors import UserError

LENGTH = 32
NUM_EXAMPLES = 1500
FUNCTION_WORDS = ("the", "a", "and", "was", "it", "this", "with", "of", "is", "i")
SHARED_SENTIMENT = {
    0: ("bad", "terrible", "awful", "poor", "horrible", "hate", "disappointing", "worst"),
    1: ("good", "great", "excellent", "wonderful", "superb", "love", "fantastic", "best"),
}
STYLES = {
    "source": {
        "fillers": ("movie", "film", "plot", "actors", "scene", "director", "story", "cast", "ending", "script", "camera", "sequel"),
        0: ("dull", "overacted", "predictable", "clumsy"),
        1: ("gripping", "masterpiece", "moving", "hilarious"),
    },
    "target": {
        "fillers": ("product", "battery", "price", "shipping", "device", "quality", "screen", "charger", "box", "seller", "cable", "warranty"),
        0: ("broken", "flimsy", "refund", "defective"),
        1: ("sturdy", "reliable", "bargain", "durable"),
    },
}  # fmt: skip


@functools.cache
def vocabulary() -> dict[str, int]:
    """The fixed word -> id map of both domains (ids from 2, words sorted)."""
    words = set(FUNCTION_WORDS) | {w for ws in SHARED_SENTIMENT.values() for w in ws}
    for style in STYLES.values():
        words |= set(style["fillers"]) | set(style[0]) | set(style[1])
    return {w: i + 2 for i, w in enumerate(sorted(words))}


def vocab_size() -> int:
    """Number of token ids (vocabulary + padding + unknown)."""
    return len(vocabulary()) + 2


def make_sentences(style: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` sentences of ``style`` (``"source"`` or ``"target"``) and their labels (see the module docstring)."""
    if style not in STYLES:
        raise UserError(f"unknown text style {style!r}; valid: {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    spec = STYLES[style]
    fillers = spec["fillers"] + FUNCTION_WORDS
    texts, labels = [], rng.integers(0, 2, n)
    for y in labels:
        words = list(rng.choice(fillers, rng.integers(8, 24)))
        for _ in range(rng.integers(2, 5)):
            pool = SHARED_SENTIMENT[int(y)] if rng.random() < 0.5 else spec[int(y)]
            words.append(str(rng.choice(pool)))
        if rng.random() < 0.3:
            words.append(str(rng.choice(SHARED_SENTIMENT[1 - int(y)] + spec[1 - int(y)])))
        texts.append(" ".join(rng.permutation(words)))
    flip = rng.random(n) < 0.05
    return texts, np.where(flip, 1 - labels, labels).astype(np.int32)


@functools.cache
def make_text_domain(style: str) -> Domain:
    """``text/source`` (movie style) or ``text/target`` (product style) as a :class:`Domain`."""
    texts, labels = make_sentences(style, NUM_EXAMPLES, seed=list(STYLES).index(style))
    ids = np.stack([encode(t, vocabulary(), LENGTH) for t in texts])
    a, b = int(0.6 * NUM_EXAMPLES), int(0.8 * NUM_EXAMPLES)
    cuts = {"train": (0, a), "val": (a, b), "test": (b, NUM_EXAMPLES)}
    return Domain(
        name=f"text/{style}",
        splits={k: ArraySource({"text": ids[i:j], "label": labels[i:j]}) for k, (i, j) in cuts.items()},
        num_classes=2,
        input_shape=(LENGTH,),
        modality="text",
        description=f"synthetic {'movie' if style == 'source' else 'product'}-review sentiment, {LENGTH} token ids",
        class_names=("negative", "positive"),
    )


@register_domain("text/source", description="synthetic sentiment, movie-review style (pairs with text/target)")
def text_source(data_dir: str | None = None) -> Domain:
    """The synthetic movie-review sentiment domain."""
    del data_dir
    return make_text_domain("source")


@register_domain("text/target", description="synthetic sentiment, product-review style")
def text_target(data_dir: str | None = None) -> Domain:
    """The synthetic product-review sentiment domain."""
    del data_dir
    return make_text_domain("target")
