"""The optimiser side of the tllib digits protocol: inv:<gamma> schedule, SGD as tllib's torch SGD."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from da_framework.config import ConfigError, ExperimentConfig
from da_framework.train.loop import make_optimizer


def test_inv_gamma_schedule_is_per_step_and_independent_of_steps():
    """With adam and a constant gradient 1 every update is -lr_t (bias-corrected moments = 1)."""
    for steps in (10, 100_000):
        config = ExperimentConfig(optimizer="adam", learning_rate=0.01, lr_schedule="inv:0.01", steps=steps)
        tx = make_optimizer(config)
        p = jnp.zeros(())
        state = tx.init(p)
        got = []
        for _ in range(201):
            u, state = tx.update(jnp.ones(()), state, p)
            got.append(-float(u))
        t = np.arange(201, dtype=np.float64)
        np.testing.assert_allclose(got, 0.01 * (1 + 0.01 * t) ** -0.75, rtol=1e-4)


def test_sgd_matches_torch_sgd_nesterov_with_coupled_weight_decay():
    """tllib: torch SGD(lr, momentum=0.9, weight_decay=wd, nesterov=True); reference in float64."""
    lr, wd, m = 0.1, 1e-3, 0.9
    config = ExperimentConfig(optimizer="sgd", learning_rate=lr, lr_schedule="constant", weight_decay=wd)
    tx = make_optimizer(config)
    p = jnp.array([1.0, -2.0])
    state = tx.init(p)
    ref, buf = np.array([1.0, -2.0]), None
    for _ in range(5):
        g = 3.0 * p  # gradient of 1.5 |p|^2
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        d = 3.0 * ref + wd * ref  # torch: d_p = grad + wd * p
        buf = d.copy() if buf is None else m * buf + d
        ref = ref - lr * (d + m * buf)  # nesterov
    np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-6)


@pytest.mark.parametrize("bad", ["inv:", "inv:0", "inv:-1", "inv:x", "inv:nan", "invx"])
def test_bad_inv_schedule_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="inv:<gamma>"):
        ExperimentConfig(lr_schedule=bad)
