"""The ``dann_alt`` training step: DomainBed's alternating DANN / CDANN updates, one sub-step per training step.

Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016, and Li et al., "Deep
Domain Generalization via Conditional Invariant Adversarial Networks", ECCV 2018, in the form of
facebookresearch/DomainBed ``domainbed/algorithms.py`` class ``AbstractDANN.update`` (read at
commit 026d588).  With c = step + 1 (DomainBed increments ``update_count`` before testing it)
and d = ``d_steps_per_g_step``:

* if ``c % (1 + d) < d``: a discriminator step, DomainBed's ``disc_opt``, on L_d over the
  term's parameters (discriminator, CDANN's class embedding);
* else a generator step, ``gen_opt``, on the method's total ``CE - dann_lambda * L_d`` over the
  model's parameters (featurizer and classifier head).

So with d = 1 the first step trains the generator, the second the discriminator, and so on.
L_d and the terms are :mod:`da_framework.losses.dann_alternating`'s.  Both optimisers are
:func:`~da_framework.losses.dann_alternating.domainbed_adam` (``betas=(beta1, 0.9)``), their
states kept in the term's ``TermState.state`` (``train_state.term_states[<key>]["disc_opt"]``
and ``["gen_opt"]``), so :class:`~da_framework.train.state.TrainState` is unchanged; each
advances only on its own sub-step, and the side a sub-step does not train keeps its parameters
and optimiser state bit-identical (the two sides are separate ``lax.cond`` branches).  The
run's optimiser ``tx`` is not used and its state is carried through untouched.

The method is ``cross_entropy + dann_alt`` (or ``cdann_alt``): DomainBed's classifier loss is
the cross-entropy of the concatenated environments.  The model sees the source batch only (the
held-out environment's batch is never read), in training mode on both sub-steps (normalisation
statistics move on each, as DomainBed's featurizer runs on both).  Metrics: ``loss`` (the
sub-step's objective: DomainBed's ``disc_loss`` or ``gen_loss``), ``loss/<key>/disc_step`` (1.0
on discriminator steps), ``grad_norm`` (of the trained side's gradient), the terms' parts and
metrics, ``source_train_accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.dann_alternating import TRAINER, check_hparams, domainbed_adam
from da_framework.losses.dg_trainers import batch_accuracy
from da_framework.losses.registry import DomainView, LossError, LossInputs, get_loss
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep, make_apply_model

TERMS = ("dann_alt", "cdann_alt")


def is_discriminator_step(step: jax.Array, d_steps_per_g_step: int) -> jax.Array:
    """DomainBed's test: True when ``(step + 1) % (1 + d_steps_per_g_step) < d_steps_per_g_step``."""
    return (step + 1) % (1 + d_steps_per_g_step) < d_steps_per_g_step


def _adversarial_term(method: Method, num_sources: int, compute_dtype: str) -> Any:
    """The method's one ``dann_alt`` / ``cdann_alt`` term, after the build-time checks (one-line LossErrors)."""
    adversarial = [t for t in method.terms if t.loss in TERMS]
    others = [t.loss for t in method.terms if t.loss not in TERMS]
    if len(adversarial) != 1 or not others or any(loss != "cross_entropy" for loss in others):
        raise LossError(
            f"{TRAINER}: write the method as 'cross_entropy + dann_alt' or 'cross_entropy + cdann_alt' (one adversarial "
            f"term, the classifier's cross-entropy otherwise), got {method.name!r}"
        )
    if num_sources < 2:
        raise LossError(
            f"{adversarial[0].loss}: needs at least 2 training environments, got {num_sources}; list them as "
            f"source='a,b,...'"
        )
    if compute_dtype != "float32":
        raise LossError(f"{adversarial[0].loss}: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    return adversarial[0]


def make_dann_alt_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds the alternating DANN / CDANN step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; ``tx`` is
    not used (module doc).  The source batch holds ``num_sources`` >= 2 environments of equal
    size; the target batch is not read.

    Raises:
      LossError: for a method other than ``cross_entropy + dann_alt`` / ``cdann_alt``, fewer than
        two environments, a compute dtype other than float32 or a bad hyper-parameter.
    """
    del tx, num_targets
    term = _adversarial_term(method, num_sources, compute_dtype)
    key_ = term.key
    hp = check_hparams(term.loss, **{**get_loss(term.loss).hparams, **dict(term.hparams)})
    disc_tx = domainbed_adam(hp.lr_d, hp.weight_decay_d, hp.beta1)
    gen_tx = domainbed_adam(hp.lr_g, hp.weight_decay_g, hp.beta1)

    def losses(params: Any, state: TrainState, xs: jax.Array, ys: jax.Array, key: jax.Array,
               progress: jax.Array) -> tuple[Any, Any, jax.Array]:
        """One training-mode pass on the source batch: (the method's loss, new model state, logits)."""
        k_model, k_loss = jax.random.split(key)
        mutable = list(state.model_state)
        variables = {"params": params["model"], **state.model_state}
        out = model.apply(variables, xs, train=True, rngs={"dropout": k_model}, mutable=mutable if mutable else False)
        (logits, feats), new_model_state = out if mutable else (out, state.model_state)
        b = xs.shape[0] // num_sources
        views = tuple(
            DomainView(i, True, feats[i * b:(i + 1) * b], logits[i * b:(i + 1) * b], ys[i * b:(i + 1) * b],
                       xs[i * b:(i + 1) * b])
            for i in range(num_sources)
        )
        inputs = LossInputs(
            source_features=feats, target_features=feats[:0], source_logits=logits, target_logits=logits[:0],
            source_labels=ys, progress=progress, key=k_loss, source_inputs=xs, target_inputs=xs[:0],
            params=params["model"], apply_model=make_apply_model(model, state.model_state, k_model), domains=views,
        )
        return method.loss(params["aux"], state.term_states, inputs), dict(new_model_state) if mutable else {}, logits

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        xs, ys = source_batch[input_key], source_batch["label"]
        if xs.shape[0] % num_sources:
            raise LossError(f"a source batch of {xs.shape[0]} examples does not split into {num_sources} equal "
                            f"environments")
        if set(state.params["aux"]) != {key_}:
            raise LossError(f"{term.loss}: the train state's auxiliary parameters are {sorted(state.params['aux'])}, "
                            f"expected only {key_!r}")
        progress = jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0)
        params, opts = state.params, state.term_states[key_]

        def with_aux(aux_term: Any) -> Any:
            return {"model": params["model"], "aux": {key_: aux_term}}

        def discriminator_step() -> tuple[Any, Any, Any, Any, jax.Array, jax.Array]:
            def objective(aux_term: Any) -> tuple[jax.Array, Any]:
                out, model_state, logits = losses(with_aux(aux_term), state, xs, ys, key, progress)
                return out.metrics[f"{key_}/disc_loss"], (out, model_state, logits)

            (value, aux_out), grads = jax.value_and_grad(objective, has_aux=True)(params["aux"][key_])
            updates, disc_opt = disc_tx.update(grads, opts["disc_opt"], params["aux"][key_])
            new_params = with_aux(optax.apply_updates(params["aux"][key_], updates))
            return new_params, {**opts, "disc_opt": disc_opt}, aux_out, value, optax.global_norm(grads), jnp.float32(1)

        def generator_step() -> tuple[Any, Any, Any, Any, jax.Array, jax.Array]:
            def objective(model_params: Any) -> tuple[jax.Array, Any]:
                p = {"model": model_params, "aux": params["aux"]}
                out, model_state, logits = losses(p, state, xs, ys, key, progress)
                return out.total, (out, model_state, logits)

            (value, aux_out), grads = jax.value_and_grad(objective, has_aux=True)(params["model"])
            updates, gen_opt = gen_tx.update(grads, opts["gen_opt"], params["model"])
            new_params = {"model": optax.apply_updates(params["model"], updates), "aux": params["aux"]}
            return new_params, {**opts, "gen_opt": gen_opt}, aux_out, value, optax.global_norm(grads), jnp.float32(0)

        new_params, new_opts, (out, model_state, logits), value, grad_norm, disc_flag = jax.lax.cond(
            is_discriminator_step(state.step, hp.d_steps_per_g_step), discriminator_step, generator_step
        )
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            model_state=model_state,
            term_states={**state.term_states, key_: new_opts},
        )
        metrics = {"loss": value, "source_train_accuracy": batch_accuracy(logits, ys), "grad_norm": grad_norm,
                   f"loss/{key_}/disc_step": disc_flag}
        metrics.update({f"loss/{k}": v for k, v in {**out.parts, **out.metrics}.items()})
        return new_state, metrics

    return step
