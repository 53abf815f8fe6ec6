"""Device prefetch: keep the next batches already on their way to the accelerator.

``jax.device_put`` is asynchronous: it starts the host-to-device copy and returns at once.
:func:`prefetch_to_device` places ``size`` batches ahead of the one the training step is
using, so the copies of the next batches overlap the current step's compute (the pattern
of ``flax.jax_utils.prefetch_to_device``, for any placement function, e.g. sharding over a
mesh).  Order and content of the batches are unchanged.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from da_framework.errors import UserError

T = TypeVar("T")
U = TypeVar("U")


def prefetch_to_device(items: Iterable[T], size: int, place: Callable[[T], U]) -> Iterator[U]:
    """Yields ``place(x)`` for every ``x`` of ``items``, placing up to ``size`` ahead.

    Args:
      items: host batches (e.g. dicts of NumPy arrays), possibly infinite.
      size: how many batches beyond the one being consumed are already placed while it
        is in use; 0 places each batch only when it is asked for.
      place: moves one batch to the devices (``jax.device_put``, ``shard_batch``).

    Yields:
      the placed batches, in the order of ``items``.

    Raises:
      ValueError: for a negative ``size``.
    """
    if size < 0:
        raise UserError(f"prefetch size must be >= 0, got {size}")
    iterator = iter(items)
    if size == 0:
        yield from map(place, iterator)
        return
    queue: collections.deque[U] = collections.deque()

    def enqueue(n: int) -> None:
        for item in itertools.islice(iterator, n):
            queue.append(place(item))

    enqueue(size)
    while queue:
        item = queue.popleft()
        # Place the next batch before handing this one over: the consumer's step is then
        # dispatched while ``size`` batches (this one's successors) are already in flight.
        enqueue(1)
        yield item
