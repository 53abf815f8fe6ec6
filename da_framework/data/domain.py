"""Domains: named, split-able sources of (input, label) examples.

A :class:`Domain` is what every experiment pairs: a *source* domain with labels used
for training and a *target* domain whose labels are used only for evaluation.  Each
split of a domain is a random-access data source (``len(src)`` and ``src[i]``), the
protocol shared by ``tfds.data_source`` and ``grain``; records are dicts with at least
``"image"`` (or ``"text"``) and ``"label"``.

Two kinds of sources exist:

* :class:`ArraySource` holds preprocessed NumPy arrays in memory (the embedded digits
  benchmark, small generated domains).  Batches are gathered with one fancy-index per
  batch.
* any other random-access source (e.g. a ``tfds.data_source``) wrapped in
  :class:`MappedSource`, which applies a per-record preprocessing function; batches are
  produced through a ``grain.MapDataset`` pipeline, read ahead by threads and optionally
  by worker processes (``workers``, ``read_threads``; config keys ``data_workers``,
  ``data_threads``).
* :class:`RandomMappedSource`: like :class:`MappedSource` but its function also takes a
  ``numpy.random.Generator`` (training-time augmentation, e.g. the random resized crop of
  :mod:`da_framework.data.image_folder`).  :func:`batch_iterator` applies it with grain's
  ``random_map`` *after* the shuffle and repeat, seeded by the iterator's seed, so every
  epoch draws new augmentations and the stream is the same for a seed whatever the number
  of worker processes.

Both are iterated by :func:`batch_iterator`, which is deterministic given its seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from da_framework.errors import UserError

Record = dict[str, Any]
Batch = dict[str, np.ndarray]


class RandomAccessSource(Protocol):
    """The random-access protocol of ``tfds.data_source`` and grain sources."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


class DomainError(UserError):
    """Raised for an unknown domain, split, or a malformed domain definition."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory random-access source over equally long NumPy arrays.

    Attributes:
      arrays: mapping from field name (``"image"``, ``"label"``, ...) to an array whose
        first axis indexes examples.
    """

    arrays: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise DomainError(f"ArraySource fields have different lengths: {lengths}")
        if not lengths:
            raise DomainError("ArraySource needs at least one field")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index: int) -> Record:
        return {k: v[index] for k, v in self.arrays.items()}

    def gather(self, indices: np.ndarray) -> Batch:
        """Returns the batch made of the examples at ``indices``."""
        return {k: v[indices] for k, v in self.arrays.items()}

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArraySource:
        """Returns a new source holding only the examples at ``indices``."""
        idx = np.asarray(indices)
        return ArraySource({k: v[idx] for k, v in self.arrays.items()})


@dataclasses.dataclass(frozen=True)
class MappedSource:
    """A random-access source with a per-record preprocessing function applied lazily.

    Attributes:
      source: the underlying source, e.g. a ``tfds.data_source`` split.
      fn: maps one raw record to a preprocessed record (NumPy values).
    """

    source: RandomAccessSource
    fn: Callable[[Record], Record]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Record:
        return self.fn(self.source[index])


@dataclasses.dataclass(frozen=True)
class RandomMappedSource:
    """A random-access source whose per-record function also draws random numbers.

    :func:`batch_iterator` applies ``fn`` per element of its shuffled, repeated stream with a
    generator seeded from the iterator's seed and the element's position in the stream
    (grain's ``MapDataset.random_map``): new draws every epoch, one stream per seed.
    Indexing the source directly (``src[i]``, evaluation) uses a generator seeded by
    ``(seed, i)``: deterministic, the same on every call.

    Attributes:
      source: the underlying source (records before the random function).
      fn: ``fn(record, rng) -> record`` with ``rng`` a ``numpy.random.Generator``.
      seed: seed of direct indexing.
    """

    source: RandomAccessSource
    fn: Callable[[Record, np.random.Generator], Record]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Record:
        return self.fn(self.source[index], np.random.default_rng((self.seed, index)))


@dataclasses.dataclass(frozen=True)
class Domain:
    """A named data domain with named splits.

    Attributes:
      name: registry name, e.g. ``"digits/rotate"`` or ``"mnist"``.
      splits: mapping split name (``"train"``, ``"val"``, ``"test"``) to a source.
      num_classes: number of classes of ``"label"``.
      input_shape: shape of one preprocessed input (``(H, W, C)`` for images,
        ``(L,)`` for token ids).
      modality: ``"image"`` or ``"text"``; the input field is named after it.
      description: how the domain is made (shown by ``da list``).
      class_names: optional human-readable class names.
    """

    name: str
    splits: Mapping[str, RandomAccessSource]
    num_classes: int
    input_shape: tuple[int, ...]
    modality: Literal["image", "text"] = "image"
    description: str = ""
    class_names: tuple[str, ...] | None = None

    @property
    def input_key(self) -> str:
        """The record field holding the model input."""
        return self.modality

    def split(self, name: str) -> RandomAccessSource:
        """Returns split ``name``, or raises a :class:`DomainError` listing the splits."""
        if name not in self.splits:
            raise DomainError(
                f"domain {self.name!r} has no split {name!r}; "
                f"available splits: {', '.join(sorted(self.splits))}"
            )
        return self.splits[name]


def _collate(records: Sequence[Record]) -> Batch:
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def batch_iterator(
    source: RandomAccessSource,
    batch_size: int,
    seed: int,
    *,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    fields: Sequence[str] | None = None,
    workers: int = 0,
    read_threads: int = 4,
) -> Iterator[Batch]:
    """Yields batches of ``source``; deterministic for a given ``seed``.

    Args:
      source: an :class:`ArraySource` (fast in-memory path) or any random-access source
        (read through a ``grain.MapDataset`` pipeline).
      batch_size: examples per batch.
      seed: seed of the per-epoch shuffle.
      shuffle: reshuffle every epoch.
      repeat: cycle forever (training) rather than stop after one epoch.
      drop_remainder: drop a last incomplete batch.
      fields: keep only these record fields (default: all).  ``"index"`` (:data:`INDEX`),
        when the source has no such field, is each example's int32 position in ``source``
        (what a trainer that keeps per-example state, such as SHOT's pseudo-labels, reads).
      workers: grain worker processes that read and preprocess batches (catalog sources
        only; 0: in this process).  Worker outputs are interleaved in order, so the
        stream does not depend on ``workers``.
      read_threads: grain threads prefetching batches in each reading process (catalog
        sources only; 0: no read-ahead).

    Yields:
      dicts of stacked NumPy arrays, one entry per field.
    """
    n = len(source)
    if n == 0:
        raise DomainError("cannot iterate over an empty data source")
    if batch_size <= 0:
        raise DomainError(f"batch_size must be positive, got {batch_size}")
    if drop_remainder and repeat and batch_size > n:
        # A training stream over a tiny split: sample across epoch boundaries.
        drop_remainder = False
    if isinstance(source, ArraySource):
        yield from _array_batches(source, batch_size, seed, shuffle, repeat, drop_remainder, fields)
        return
    if workers < 0 or read_threads < 0:
        raise DomainError(f"workers and read_threads must be >= 0, got {workers} and {read_threads}")
    yield from _grain_batches(source, batch_size, seed, shuffle, repeat, drop_remainder, fields, workers, read_threads)


INDEX = "index"


def _select(batch: Batch, fields: Sequence[str] | None, positions: np.ndarray | None = None) -> Batch:
    if fields is None:
        return batch
    if INDEX in fields and INDEX not in batch and positions is not None:
        batch = {**batch, INDEX: positions.astype(np.int32)}
    return {k: batch[k] for k in fields}


def _array_batches(
    source: ArraySource,
    batch_size: int,
    seed: int,
    shuffle: bool,
    repeat: bool,
    drop_remainder: bool,
    fields: Sequence[str] | None,
) -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    n = len(source)
    carry = np.zeros((0,), dtype=np.int64)
    while True:
        order = rng.permutation(n) if shuffle else np.arange(n)
        order = np.concatenate([carry, order])
        stop = len(order) - len(order) % batch_size
        for start in range(0, stop, batch_size):
            picked = order[start : start + batch_size]
            yield _select(source.gather(picked), fields, picked)
        carry = order[stop:]
        if not repeat:
            if len(carry) and not drop_remainder:
                yield _select(source.gather(carry), fields, carry)
            return


def _grain_batches(
    source: RandomAccessSource,
    batch_size: int,
    seed: int,
    shuffle: bool,
    repeat: bool,
    drop_remainder: bool,
    fields: Sequence[str] | None,
    workers: int = 0,
    read_threads: int = 4,
) -> Iterator[Batch]:
    import grain  # imported lazily: only non-array sources need it

    random_fn = source.fn if isinstance(source, RandomMappedSource) else None
    ds = grain.MapDataset.source(source.source if random_fn is not None else source)
    if fields is not None and INDEX in fields:  # each record's position, before the shuffle
        ds = ds.map_with_index(lambda i, r: r if INDEX in r else {**r, INDEX: np.int32(i)})
        if random_fn is not None:
            base_fn = random_fn
            random_fn = lambda r, rng: {**base_fn(r, rng), INDEX: r[INDEX]}
    if fields is not None and random_fn is None:
        keep = tuple(fields)
        ds = ds.map(lambda r: {k: r[k] for k in keep})
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()  # grain reshuffles every epoch of a shuffled dataset
    if random_fn is not None:
        # After shuffle/repeat: the generator is keyed by the position in the stream.
        ds = ds.random_map(random_fn, seed=seed % 2**32)
        if fields is not None:
            keep = tuple(fields)
            ds = ds.map(lambda r: {k: r[k] for k in keep})
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_collate)
    if not workers and not read_threads:
        yield from ds
        return
    # Read-ahead threads (and optionally worker processes) prepare the next batches while
    # the accelerator trains on the current one; both keep the order of ``ds``.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * read_threads, 1)))
    if workers:
        from absl import flags  # grain's worker pool reads absl flags: use their defaults

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    yield from it


def iterate_records(source: RandomAccessSource) -> Iterator[Record]:
    """Yields every record of ``source`` in order."""
    # Not ``__getitems__``: tfds's mock data sources implement it wrongly.
    return (source[i] for i in range(len(source)))
