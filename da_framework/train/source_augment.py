"""Source-batch augmentation inside the compiled step (config key ``source_augment``).

:func:`with_source_augment` wraps any trainer's step ``(state, source_batch, target_batch,
key) -> (state, metrics)``: the source batch's inputs are replaced by the augmentation of
:func:`da_framework.data.augment_spec.make_augment` before the step runs, with the key
``fold_in(key, AUGMENT_SALT)``, and the step gets ``key`` unchanged -- so dropout and every
term draw what they drew without augmentation, and an empty spec returns the step itself
(bitwise the old run).  The target batch is never touched (SHOT's and tllib's target
transforms are the test transform).  Because the augmentation is part of the jitted step, a
run stays reproducible from its seed and pays no host-side image work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from da_framework.data.augment_spec import AugmentSpecError, make_augment

AUGMENT_SALT = 0x5A06  # the step key's fold for the source augmentation

Step = Callable[..., Any]


class AugmentedStep:
    """A trainer's step with its source inputs augmented; ``inner`` is the trainer's own step.

    Code that asks what kind of trainer runs (a :class:`~da_framework.train.target_pass.TargetPassStep`'s
    hooks, a ``check_config``) asks :func:`trainer_step`, which unwraps this.
    """

    def __init__(self, inner: Step, augment: Callable[[jax.Array, jax.Array], jax.Array], input_key: str) -> None:
        self.inner, self.augment, self.input_key = inner, augment, input_key

    def __call__(self, state: Any, source_batch: Mapping[str, jax.Array], target_batch: Mapping[str, jax.Array],
                 key: jax.Array) -> Any:
        """Augments ``source_batch[input_key]`` with ``fold_in(key, AUGMENT_SALT)``, then runs the step with ``key``."""
        images = self.augment(jax.random.fold_in(key, AUGMENT_SALT), source_batch[self.input_key])
        return self.inner(state, {**source_batch, self.input_key: images}, target_batch, key)


def with_source_augment(step: Step, spec: str, input_key: str = "image",
                        input_shape: tuple[int, ...] | None = None) -> Step:
    """``step`` with its source inputs augmented by ``spec``; ``step`` itself for an empty spec.

    Args:
      step: a train step ``(state, source_batch, target_batch, key) -> (state, metrics)``.
      spec: an augmentation spec (:mod:`da_framework.data.augment_spec`), e.g.
        ``"random_crop(pad=4, mode='constant') | random_rotation(max_degrees=10, order=0, mode='constant')"``.
      input_key: the batch field holding model inputs.
      input_shape: the shape of one input, checked when given: the ops take (H, W, C) images
        with 1 or 3 channels.

    Raises:
      AugmentSpecError: a spec that does not parse, or inputs that are not such images (one
        line, before anything compiles).
    """
    augment = make_augment(spec)
    if augment is not None and input_shape is not None and (
            input_key != "image" or len(input_shape) != 3 or input_shape[-1] not in (1, 3)):
        raise AugmentSpecError(f"source_augment needs (H, W, C) images with 1 or 3 channels; the source's "
                               f"{input_key!r} inputs have shape {tuple(input_shape)}; leave source_augment empty")
    return step if augment is None else AugmentedStep(step, augment, input_key)


def trainer_step(step: Step) -> Step:
    """The trainer's own step object under any :class:`AugmentedStep` wrapper."""
    return step.inner if isinstance(step, AugmentedStep) else step
