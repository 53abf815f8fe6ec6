"""The one finite-check every training loop uses: NaN/inf losses stop a run with a clear error.

A loop keeps the first step whose loss was non-finite on the device (:func:`first_bad_step`,
inside its compiled step, so there is no host sync per step) and checks the fetched losses
with :func:`check_finite` whenever it reads metrics anyway (``train``'s ``log_every``, the
vmapped-seeds runner, fine-tuning's and the detector's ``fit`` at their end).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def first_bad_step(first_bad: jax.Array, step: jax.Array, losses: Mapping[str, jax.Array]) -> jax.Array:
    """``first_bad`` updated on the device: ``step`` if it is 0 and a loss in ``losses`` is not finite.

    Args:
      first_bad: int32 scalar, 0 while every loss so far was finite.
      step: the 1-based number of the step that produced ``losses``.
      losses: scalar losses of that step (every entry is checked).
    """
    finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in losses.values()]))
    return jnp.where((first_bad == 0) & ~finite, jnp.asarray(step, jnp.int32), first_bad)


def check_finite(step: int, metrics: Mapping[str, float], learning_rate: float | None, first_bad: int | None = None) -> None:
    """Raises :class:`NonFiniteLossError` if a fetched loss (a key starting ``loss``) is NaN/inf.

    Args:
      step: the step whose metrics were fetched.
      metrics: fetched metrics; keys starting with ``loss`` are checked.
      learning_rate: the run's learning rate, named in the message's fix (None: not known here).
      first_bad: the first non-finite step tracked on the device (:func:`first_bad_step`), when
        the fetch came later than that step.
    """
    bad = {k: v for k, v in metrics.items() if k.startswith("loss") and not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        where = f"step {first_bad} (seen at the metric fetch of step {step})" if first_bad and first_bad != step else f"step {step}"
        lr = "the learning rate" if learning_rate is None else f"learning_rate (now {learning_rate})"
        raise NonFiniteLossError(
            f"non-finite loss at {where} ({terms}); lower {lr}, lower the weights of the diverging terms, or set grad_clip"
        )
