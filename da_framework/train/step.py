"""The training step: ``(state, source_batch, target_batch, key) -> (state, metrics)``.

:func:`make_train_step` closes over the static parts (model, method, optimiser, number of
steps) and returns a pure function of arrays, to be compiled once with ``jax.jit``.  Source
and target batches go through the model in one concatenated forward pass, so
normalisation statistics see both domains (as in DANN and Transfer-Learning-Library);
``forward_target=False`` forwards the source batch alone, for methods that never read the
target (DomainBed's step: a third less compute on its MNIST protocol).
Target labels are never read.  With ``compute_dtype="bfloat16"`` the model runs in
bfloat16 on float32 master weights and every loss term sees float32 logits and features
(:mod:`da_framework.train.precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.registry import DomainView, LossError, LossInputs, get_loss
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.precision import cast_floating, cast_like, get_compute_dtype
from da_framework.train.state import TrainState

Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Mapping[str, jax.Array], Mapping[str, jax.Array], jax.Array], tuple[TrainState, Metrics]]
StepBuilder = Callable[..., TrainStep]


def train_forward(model: Classifier, params: Any, model_state: Mapping[str, Any], x: jax.Array,
                  key: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
    """Training-mode ``model`` on ``x`` with dropout from ``key``: ``(logits, features, new model state)``.

    The new state holds the pass's normalisation statistics (``model_state`` itself when the
    model has none).  What a trainer with its own update calls for each forward pass.
    """
    mutable = list(model_state)
    out = model.apply({"params": params, **model_state}, x, train=True, rngs={"dropout": key},
                      mutable=mutable if mutable else False)
    (logits, feats), new_state = out if mutable else (out, {})
    return logits, feats, dict(new_state) if mutable else model_state


def make_apply_model(
    model: Classifier,
    model_state: Mapping[str, Any],
    key: jax.Array,
    lower: Callable[[Any], Any] = lambda tree: tree,
    to_f32: Callable[[Any], Any] = lambda tree: tree,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The ``apply_model(params, x, train=True) -> (logits, features)`` of a step's :class:`LossInputs`.

    Runs ``model`` with the step's normalisation state ``model_state`` (updates discarded).
    Each call draws its own dropout key, ``fold_in(key, i)`` for the i-th call (i = 1, 2, ...)
    while tracing the step, so two re-runs (e.g. a weak and a strong view, or a student and
    a teacher view) get independent dropout masks, distinct from the main forward pass's
    (which uses ``key`` itself).  The count restarts with every traced step.

    Args:
      model: the classifier.
      model_state: its non-trainable collections at the start of the step.
      key: the dropout key of the step's main forward pass.
      lower: casts params and inputs to the compute dtype (identity in float32).
      to_f32: casts the outputs back to what loss terms see (identity in float32).
    """
    mutable = list(model_state)
    calls = [0]

    def apply_model(p: Any, x: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
        calls[0] += 1
        rngs = {"dropout": jax.random.fold_in(key, calls[0])}
        v = {"params": lower(p), **model_state}
        if train and mutable:
            return to_f32(model.apply(v, lower(x), train=True, rngs=rngs, mutable=mutable)[0])
        return to_f32(model.apply(v, lower(x), train=train, rngs=rngs))

    return apply_model


def domain_views(
    features: jax.Array,
    logits: jax.Array,
    inputs: jax.Array,
    source_labels: jax.Array,
    n_source: int,
    num_sources: int,
    num_targets: int,
) -> tuple[DomainView, ...]:
    """Splits a step's concatenated outputs (all sources, then all targets) into one view per domain.

    Each role's part holds the same number of examples from each of its domains, in order;
    sources get ids 0..num_sources-1, targets num_sources.. (``num_targets=0``: a pass over
    the sources alone).
    """
    n_target = features.shape[0] - n_source
    if n_source % num_sources or (n_target % num_targets if num_targets else n_target):
        raise ValueError(
            f"a step batch of {n_source} source / {n_target} target examples does not split into "
            f"{num_sources} source / {num_targets} target domains of equal size"
        )
    views = []
    for i, (start, size, labelled) in enumerate(
        [(j * (n_source // num_sources), n_source // num_sources, True) for j in range(num_sources)]
        + [(n_source + j * (n_target // num_targets), n_target // num_targets, False) for j in range(num_targets)]
    ):
        part = slice(start, start + size)
        labels = source_labels[part] if labelled else None
        views.append(DomainView(i, labelled, features[part], logits[part], labels, inputs[part]))
    return tuple(views)


def _number(value: Any) -> Any:
    """A hyper-parameter as a float, or unchanged when it is a (traced) array (vmapped samples)."""
    return value if isinstance(value, jax.Array) else float(value)


def optimizer_resets(method: Method) -> list[tuple[float, float, float | None]]:
    """``(step, steps_of, lr)`` of every term registered with an ``optimizer_reset`` hyper-parameter;
    ``lr`` is the term's ``lr_after_reset`` value (the learning rate from the reset on), or None."""
    out = []
    for term in method.terms:
        spec = get_loss(term.loss)
        if spec.optimizer_reset:
            hp = {**spec.hparams, **dict(term.hparams)}
            lr = _number(hp[spec.lr_after_reset]) if spec.lr_after_reset else None
            out.append((_number(hp[spec.optimizer_reset]), float(hp.get("steps_of", 0.0)), lr))
    if sum(lr is not None for *_, lr in out) > 1:
        raise LossError("at most one term of a method may switch the learning rate at its reset "
                        f"(lr_after_reset), got {sum(lr is not None for *_, lr in out)}")
    return out


def switches_learning_rate(method: Method) -> bool:
    """True when a term of ``method`` sets the learning rate at its reset (the optimiser must then be
    built with ``inject_learning_rate=True``, :func:`~da_framework.train.optimizers.build_optimizer`)."""
    return any(lr is not None for *_, lr in optimizer_resets(method))


def reset_optimizer(tx: optax.GradientTransformation, params: Any, lr: float | None) -> optax.OptState:
    """A fresh optimiser state, with the injected learning rate set to ``lr`` unless it is None."""
    fresh = tx.init(params)
    if lr is None:
        return fresh
    if optax.tree_utils.tree_get(fresh, "learning_rate") is None:
        raise LossError("a term sets the learning rate at its reset (lr_after_reset, e.g. EQRM's eqrm_lr), but the "
                        "optimiser keeps none in its state; build it with build_optimizer(..., inject_learning_rate=True)")
    return optax.tree_utils.tree_set(fresh, learning_rate=jnp.asarray(lr, jnp.float32))


def reset_fires(step: jax.Array, total_steps: int, at: float, steps_of: float) -> jax.Array:
    """True at the first step whose count ``round(min(step / total_steps, 1) * steps_of)`` (the
    count :func:`~da_framework.losses.dg_common.anneal_weight` switches on) reaches ``at``; never
    at step 0, whose optimiser state is fresh already.  ``steps_of`` 0 counts plain steps."""
    def count(s: jax.Array) -> jax.Array:
        p = jnp.minimum(s.astype(jnp.float32) / total_steps, 1.0)
        return jnp.round(p * steps_of) if steps_of else s.astype(jnp.float32)

    return (step > 0) & (count(step) >= at) & (count(step - 1) < at)


def method_loss(method: Method, aux: Any, term_states: Any, inputs: LossInputs) -> Any:
    """``method.loss(aux, term_states, inputs)``; when the step did not forward the target batch
    (``inputs.target_forwarded`` False), a term touching a ``target_*`` field (None) is a
    one-line :class:`LossError` naming the method and the fix, not a NoneType traceback."""
    if inputs.target_forwarded:
        return method.loss(aux, term_states, inputs)
    try:
        return method.loss(aux, term_states, inputs)
    except (TypeError, AttributeError) as e:
        if "NoneType" not in str(e):
            raise
        raise LossError(f"method {method.name!r} reads the target batch, which forward_target=False does not "
                        f"forward ({type(e).__name__}: {e}); set forward_target=True") from e


def make_train_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
    forward_target: bool = True,
) -> TrainStep:
    """Builds the pure train step of ``method`` for ``model`` optimised by ``tx``.

    Args:
      model: the classifier returning ``(logits, features)``.
      method: the weighted loss terms.
      tx: the optimiser over ``{"model": ..., "aux": ...}`` parameters.
      total_steps: steps of the whole run (progress p = step / total_steps).
      input_key: the batch field holding model inputs (``"image"`` or ``"text"``).
      compute_dtype: ``"float32"`` or ``"bfloat16"`` (the model's forward and backward
        dtype; parameters, optimiser state and losses stay float32).
      num_sources: labelled domains in the source batch: it is their concatenation, the
        same number of examples from each, in domain order.
      num_targets: unlabelled domains in the target batch, likewise.
      forward_target: False runs the model on the source batch alone (config key
        ``forward_target``): the ``target_*`` fields of :class:`LossInputs` are None and a term
        that reads them is a one-line :class:`LossError` when the step is traced.

    Returns:
      ``step(state, source_batch, target_batch, key) -> (state, metrics)``; the source
      batch needs ``input_key`` and ``"label"``, the target batch only ``input_key``.
      With several sources or targets, loss terms also get one
      :class:`~da_framework.losses.registry.DomainView` per domain (``inputs.domains``).
    """

    dtype = get_compute_dtype(compute_dtype)
    low = dtype != jnp.float32
    resets = optimizer_resets(method)

    def lower(tree):  # model params and inputs in the compute dtype (ints untouched)
        return cast_floating(tree, dtype) if low else tree

    def to_f32(tree):  # what the loss terms see
        return cast_floating(tree, jnp.float32) if low else tree

    def loss_fn(params, state, source_batch, target_batch, key):
        k_model, k_loss = jax.random.split(key)
        xs = source_batch[input_key]
        xt = target_batch[input_key] if forward_target else None
        n_s, joint = xs.shape[0], jnp.concatenate([xs, xt]) if forward_target else xs
        variables = {"params": lower(params["model"]), **state.model_state}
        mutable = list(state.model_state)
        out = model.apply(
            variables,
            lower(joint),
            train=True,
            rngs={"dropout": k_model},
            mutable=mutable if mutable else False,
        )
        (logits, feats), new_model_state = out if mutable else (out, {})
        logits, feats = to_f32((logits, feats))
        if low:  # running statistics keep their stored dtype
            new_model_state = cast_like(dict(new_model_state), state.model_state)

        apply_model = make_apply_model(model, state.model_state, k_model, lower, to_f32)
        domains = ()
        if num_sources > 1 or num_targets > 1:
            domains = domain_views(feats, logits, joint, source_batch["label"], n_s,
                                   num_sources, num_targets if forward_target else 0)
        inputs = LossInputs(
            source_features=feats[:n_s],
            target_features=feats[n_s:] if forward_target else None,
            source_logits=logits[:n_s],
            target_logits=logits[n_s:] if forward_target else None,
            source_labels=source_batch["label"],
            progress=jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0),
            key=k_loss,
            source_inputs=xs,
            target_inputs=xt,
            params=params["model"],
            apply_model=apply_model,
            domains=domains,
            target_forwarded=forward_target,
        )
        out = method_loss(method, params["aux"], state.term_states, inputs)
        accuracy = jnp.mean(jnp.argmax(logits[:n_s], -1) == source_batch["label"])
        return out.total, (out, dict(new_model_state), accuracy)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (out, model_state, accuracy)), grads = grad_fn(
            state.params, state, source_batch, target_batch, key
        )
        opt_state = state.opt_state
        if resets:  # DomainBed's fresh Adam when a penalty's weight jumps (LossSpec.optimizer_reset)
            for at, of, lr in resets:  # no per-step tree select: the fresh state is built under the cond only
                opt_state = jax.lax.cond(reset_fires(state.step, total_steps, at, of),
                                         lambda lr=lr: reset_optimizer(tx, state.params, lr), lambda s=opt_state: s)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        progress = jnp.minimum((state.step + 1).astype(jnp.float32) / total_steps, 1.0)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            term_states=method.update_states(out.states, params["model"], progress),
        )
        metrics = {"loss": total, "source_train_accuracy": accuracy, "grad_norm": optax.global_norm(grads)}
        metrics.update({f"loss/{k}": v for k, v in {**out.parts, **out.metrics}.items()})
        return new_state, metrics

    return step
