"""Loss-weight schedules: functions of training progress p in [0, 1] -> multiplier."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from da_framework.errors import UserError
from da_framework.losses.adversarial import dann_ramp

Schedule = Callable[[jax.Array], jax.Array]

SCHEDULES: dict[str, tuple[Schedule, str]] = {
    "constant": (lambda p: jnp.ones_like(p), "1"),
    "dann_ramp": (dann_ramp, "2 / (1 + exp(-10 p)) - 1 (Ganin et al., 2016)"),
    "linear": (lambda p: p, "p"),
    "cosine_decay": (lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)), "(1 + cos(pi p)) / 2"),
}


def get_schedule(name: str) -> Schedule:
    """Returns the schedule ``name``; the error lists valid names."""
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    return SCHEDULES[name][0]
