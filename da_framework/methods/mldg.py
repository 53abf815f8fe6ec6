"""The MLDG training step: first-order meta-learning over pairs of training environments.

Li, Yang, Song & Hospedales, "Learning to Generalize: Meta-Learning for Domain
Generalization", AAAI 2018, Algorithm 1, in DomainBed's first-order form
(facebookresearch/DomainBed, ``domainbed/algorithms.py``, class ``MLDG``; the pairing of
``domainbed/lib/misc.py``).  With K environments, theta the parameters, L_e the
cross-entropy of environment e's batch, and pairs (i, j) drawn from a random permutation:

    for each pair (i, j):
        g_i = grad L_i(theta)
        theta' = one step of a fresh optimiser from theta on g_i
        g_j = grad L_j(theta')                       (first order: no second derivatives)
    g = sum over pairs of (g_i + beta * g_j) / K
    theta <- the run's optimiser step on g.

The reported loss is DomainBed's ``objective``: sum over pairs of (L_i + beta L_j'), over K.
Pairs (hyper-parameter ``n_meta_test``): 0 gives DomainBed's 2020 ``random_pairs_of_minibatches``,
``(perm[k], perm[k + 1 mod K])`` for every k (its code until issue #94, 2022, so the code of its
2020 published tables; not read here at 7df6f06 itself); m >= 1 gives its later
``split_meta_train_test(minibatches, m)`` (commit 22002ea, default 2), ``perm[:K-m]`` zipped
with ``perm[K-m:]`` cycled.  The permutation is drawn from the step's key (:func:`mldg_pairs`).

Differences from DomainBed: its inner optimiser is a fresh ``torch.optim.Adam(lr, weight_decay)``;
here it is a fresh state of the run's own optimiser, the same in DomainBed's protocol
(``optimizer=adam``, constant rate, weight decay 0).  DomainBed forwards only deep copies of
the network, so its BatchNorm running statistics never move; here the meta-train passes
update them (MNIST_CNN has GroupNorm only, so this changes nothing there).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.dg_trainers import (
    batch_accuracy,
    checked_number,
    environment_batches,
    make_environment_loss,
    step_scale,
    trainer_term,
)
from da_framework.losses.registry import LossError
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.schedules import get_schedule
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep


def _check_n_meta_test(n_meta_test: int, num_envs: int) -> None:
    if isinstance(n_meta_test, bool) or not isinstance(n_meta_test, int) or not 0 <= n_meta_test < num_envs:
        raise LossError(f"mldg: n_meta_test must be an integer in [0, {num_envs - 1}] for {num_envs} environments, "
                        f"got {n_meta_test!r}")


def mldg_pairs(key: jax.Array, num_envs: int, n_meta_test: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    """The (meta-train, meta-test) environment pairs of one MLDG step, from a permutation drawn with ``key``.

    Args:
      key: the step's pairing key.
      num_envs: K, the training environments.
      n_meta_test: 0 for DomainBed's 2020 pairs ``(perm[k], perm[k + 1 mod K])``, k < K;
        m in [1, K) for ``zip(perm[:K-m], cycle(perm[K-m:]))``.

    Returns:
      a list (static length) of pairs of traced environment indices.
    """
    _check_n_meta_test(n_meta_test, num_envs)
    perm = jax.random.permutation(key, num_envs)
    if n_meta_test == 0:
        return [(perm[k], perm[(k + 1) % num_envs]) for k in range(num_envs)]
    train, test = num_envs - n_meta_test, perm[num_envs - n_meta_test:]
    return [(perm[k], test[k % n_meta_test]) for k in range(train)]


def make_mldg_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds MLDG's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method is the ``mldg`` term alone (its weight and schedule scale every environment's
    loss), the source batch holds ``num_sources`` >= 2 environments and the target batch is
    not read.  Metrics: ``loss`` (DomainBed's objective, also ``loss/<key>``),
    ``loss/<key>_meta_train`` and ``loss/<key>_meta_test`` (means over pairs),
    ``source_train_accuracy`` (of the meta-train passes), ``grad_norm`` (of g).
    """
    del num_targets
    term, hp = trainer_term(method, "mldg", num_sources, compute_dtype)
    n_meta_test, k = hp["n_meta_test"], num_sources
    beta = checked_number(hp["mldg_beta"], "mldg", "mldg_beta", lambda v: 0 <= v < float("inf"), "a finite number >= 0")
    _check_n_meta_test(n_meta_test, k)
    schedule = get_schedule(term.schedule)
    grad_fn = jax.value_and_grad(make_environment_loss(model), has_aux=True)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        xs, ys = environment_batches(source_batch, input_key, k)
        scale = step_scale(state.step, total_steps, term, schedule)
        k_pairs, k_model = jax.random.split(key)
        params, model_state = state.params, state.model_state
        grads = jax.tree.map(jnp.zeros_like, params)
        train_losses, test_losses, accuracies = [], [], []
        for p, (i, j) in enumerate(mldg_pairs(k_pairs, k, n_meta_test)):
            k_i, k_j = jax.random.split(jax.random.fold_in(k_model, p))
            (loss_i, (model_state, logits_i)), g_i = grad_fn(params, model_state, xs[i], ys[i], k_i, scale)
            inner_updates, _ = tx.update(g_i, tx.init(params), params)
            inner = optax.apply_updates(params, inner_updates)
            (loss_j, _), g_j = grad_fn(inner, model_state, xs[j], ys[j], k_j, scale)
            grads = jax.tree.map(lambda g, a, b: g + (a + beta * b) / k, grads, g_i, g_j)
            train_losses.append(loss_i)
            test_losses.append(loss_j)
            accuracies.append(batch_accuracy(logits_i, ys[i]))
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        objective = (sum(train_losses) + beta * sum(test_losses)) / k
        metrics = {
            "loss": objective,
            "source_train_accuracy": jnp.mean(jnp.stack(accuracies)),
            "grad_norm": optax.global_norm(grads),
            f"loss/{term.key}": objective,
            f"loss/{term.key}_meta_train": jnp.mean(jnp.stack(train_losses)),
            f"loss/{term.key}_meta_test": jnp.mean(jnp.stack(test_losses)),
        }
        return new_state, metrics

    return step
