"""The ADDA training step: source pretraining, then adversarial adaptation of a target encoder, in one run.

Tzeng, Hoffman, Saenko & Darrell, "Adversarial Discriminative Domain Adaptation", CVPR 2017,
in the form of thuml/Transfer-Learning-Library's ``examples/domain_adaptation/image_classification/adda.py``
(read at commit 2e984d3).  The method is ``cross_entropy + adda``; the model's parameters other
than ``head`` are the encoder M, ``head`` is the classifier C, the ``adda`` term's parameters the
discriminator D (:mod:`da_framework.losses.adda`).  With P = ``pretrain_steps`` and w the term's weight:

* phase 1, steps 0..P-1 (tllib's ``pretrain``): the method's cross-entropy on the source batch
  alone, over M and C (D untouched);
* at step P: M is copied into the term's state as the frozen source encoder M_s (``term_states
  [<key>]["source_encoder"]``; it never moves again) and, with ``reset_optimizer``, the optimiser
  state is re-initialised (tllib builds a new SGD optimiser and learning-rate schedule here);
* phase 2, steps P.. : C stays bit-identical (and its optimiser slots untouched); the model's M is
  the target encoder M_t (initialised from M_s), which evaluation uses with C.  Source features
  M_s(x_s) (no gradient) and target features M_t(x_t) meet D:

  - ``adversarial="grl"`` (tllib, default): one update of M_t and D on w * L_D with a gradient
    reversal layer of strength ``warm_start_coeff(step - P)`` before D;
  - ``adversarial="inverted"`` (the paper's Eq. 9): two sub-steps per training step, D on
    w * L_D (M_t's features constant), then M_t on w * BCE(D(M_t x_t), 1) with the updated D.

The phase is chosen inside the compiled step (``lax.cond`` on the step count), so the step
compiles once.  The optimiser's counter advances once per training step.  Phase 1's model sees
the source batch only (normalisation statistics from source data, as tllib's pretraining); in
phase 2 M_t sees the target batch only and its statistics move, while M_s runs in training mode
(dropout on, as tllib's source model, whose BatchNorm only is frozen) with its updates discarded.
Difference: a BatchNorm in M_s normalises with the source batch's statistics, not frozen running
statistics, since a term's state cannot hold a copy of the model's collections (its ``init``
does not see them).  Metrics: ``loss`` (the phase's objective), ``loss/cross_entropy`` and
``source_train_accuracy`` (phase 2: of the frozen source model C(M_s) on the source batch),
``loss/<key>`` (L_D; 0 in phase 1), ``loss/<key>/disc_accuracy``, ``/grl_coeff``, ``/phase``
(1 or 2) and, for ``inverted``, ``/mapping_loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.adda import (
    TRAINER,
    check_hparams,
    discriminator,
    domain_accuracy,
    encoder_params,
    inverted_label_loss,
    warm_start_coeff,
)
from da_framework.losses.adversarial import domain_adversarial_loss, gradient_reversal
from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.methods.mcd import masked_update
from da_framework.models.classifier import Classifier
from da_framework.train.method import LossTerm, Method
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep, make_apply_model, train_forward


def parameter_masks(params: Mapping[str, Any], term_key: str) -> dict[str, Any]:
    """Static boolean trees over ``{"model", "aux"}`` params: which parameters each ADDA update trains.

    Returns:
      ``{"pretrain": M and C, "adapt": M and D, "discriminator": D, "encoder": M}``.
    """
    def tree(model_part: Any, disc: bool) -> Any:
        model = {k: jax.tree.map(lambda _, k=k: model_part(k), v) for k, v in params["model"].items()}
        aux = {k: jax.tree.map(lambda _, k=k: disc and k == term_key, v) for k, v in params["aux"].items()}
        return {"model": model, "aux": aux}

    return {
        "pretrain": tree(lambda _: True, False),
        "adapt": tree(lambda k: k != "head", True),
        "discriminator": tree(lambda _: False, True),
        "encoder": tree(lambda k: k != "head", False),
    }


def _check_method(method: Method, total_steps: int, compute_dtype: str, num_sources: int,
                  num_targets: int) -> tuple[LossTerm, Method]:
    """The method's ``adda`` term and the pretraining method (its cross-entropy), after the build-time checks."""
    adda = [t for t in method.terms if t.loss == TRAINER]
    others = [t for t in method.terms if t.loss != TRAINER]
    if len(adda) != 1 or len(others) != 1 or others[0].loss != "cross_entropy":
        raise LossError(f"adda: write the method as 'cross_entropy + adda' (the source loss of the pretraining, "
                        f"then the adversarial term), got {method.name!r}")
    term = adda[0]
    if not (term.weight > 0 and term.weight != float("inf")):
        raise LossError(f"adda: the term's weight (the adversarial trade-off) must be a finite number > 0, "
                        f"got {term.weight!r}")
    if term.schedule != "constant":
        raise LossError(f"adda: the term takes no weight schedule (its reversal strength warms up by alpha, lo, hi, "
                        f"max_iters), got @{term.schedule}")
    if num_sources != 1 or num_targets != 1:
        raise LossError(f"adda adapts one labelled source to one unlabelled target, got {num_sources} source(s) and "
                        f"{num_targets} target(s)")
    if compute_dtype != "float32":
        raise LossError(f"adda: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    hp = check_hparams(**{**get_loss(TRAINER).hparams, **dict(term.hparams)})
    if hp.pretrain_steps >= total_steps:
        raise LossError(f"adda: pretrain_steps must be < steps (the run's {total_steps} steps, which include the "
                        f"pretraining), got {hp.pretrain_steps}; set adda(pretrain_steps=N) or more steps")
    return term, Method(method.name, tuple(others))


def make_adda_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds ADDA's step ``(state, source_batch, target_batch, key) -> (state, metrics)`` (module doc).

    Same signature and contract as :func:`da_framework.train.step.make_train_step`.

    Raises:
      LossError: for a method other than ``cross_entropy + adda``, a weight <= 0 or a schedule
        on the term, ``pretrain_steps`` outside [1, total_steps), a bad hyper-parameter, more
        than one source or target, or a compute dtype other than float32.
    """
    term, pretrain = _check_method(method, total_steps, compute_dtype, num_sources, num_targets)
    hp = check_hparams(**{**get_loss(TRAINER).hparams, **dict(term.hparams)})
    key_, weight, disc = term.key, float(term.weight), discriminator(hp.hidden_size, hp.disc_batch_norm)

    def run(params: Any, model_state: Any, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        return train_forward(model, params, model_state, x, key)

    def ce_inputs(state: TrainState, params: Any, logits: jax.Array, feats: jax.Array, ys: jax.Array,
                  xs: jax.Array, xt: jax.Array, key: jax.Array) -> LossInputs:
        k_model, k_loss = jax.random.split(key)
        return LossInputs(
            source_features=feats, target_features=feats[:0], source_logits=logits, target_logits=logits[:0],
            source_labels=ys, progress=jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0), key=k_loss,
            source_inputs=xs, target_inputs=xt, params=params, apply_model=make_apply_model(model, state.model_state,
                                                                                            k_model),
        )

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        xs, ys, xt = source_batch[input_key], source_batch["label"], target_batch[input_key]
        n_s = xs.shape[0]
        masks = parameter_masks(state.params, key_)
        k_pre, k_src, k_tgt, k_ce = jax.random.split(key, 4)
        params, adda_state = state.params, state.term_states[key_]
        zero = jnp.zeros((), jnp.float32)

        def pretrain_phase() -> tuple[Any, Any, Any, Any, Metrics]:
            def objective(p: Any) -> tuple[jax.Array, Any]:
                logits, feats, model_state = run(p["model"], state.model_state, xs, k_pre)
                out = pretrain.loss(p["aux"], state.term_states,
                                    ce_inputs(state, p["model"], logits, feats, ys, xs, xt, k_ce))
                return out.total, (out, model_state, logits)

            (total, (out, model_state, logits)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            new_params, opt_state = masked_update(tx, grads, state.opt_state, params, masks["pretrain"], True)
            metrics = {"loss": total, "source_train_accuracy": jnp.mean(jnp.argmax(logits, -1) == ys),
                       "grad_norm": optax.global_norm(grads), **_parts(out.parts), f"loss/{key_}": zero,
                       f"loss/{key_}/disc_accuracy": zero, f"loss/{key_}/grl_coeff": zero,
                       f"loss/{key_}/phase": jnp.float32(1)}
            if hp.adversarial == "inverted":
                metrics[f"loss/{key_}/mapping_loss"] = zero
            return new_params, opt_state, model_state, adda_state, metrics

        def adapt_phase() -> tuple[Any, Any, Any, Any, Metrics]:
            switch = state.step == hp.pretrain_steps
            source_encoder = jax.lax.cond(switch, lambda: encoder_params(params["model"]),  # no per-step tree select
                                          lambda: adda_state["source_encoder"])
            opt_state = state.opt_state
            if hp.reset_optimizer:  # tllib's fresh optimiser and schedule for the adaptation
                opt_state = jax.lax.cond(switch, lambda: tx.init(params), lambda: opt_state)
            head = params["model"]["head"]
            src_logits, f_s, _ = run({**source_encoder, "head": head}, state.model_state, xs, k_src)
            f_s = jax.lax.stop_gradient(f_s)
            src_out = pretrain.loss(params["aux"], state.term_states,
                                    ce_inputs(state, params["model"], src_logits, f_s, ys, xs, xt, k_ce))
            metrics = {"source_train_accuracy": jnp.mean(jnp.argmax(src_logits, -1) == ys), **_parts(src_out.parts),
                       f"loss/{key_}/phase": jnp.float32(2)}
            if hp.adversarial == "grl":
                coeff = warm_start_coeff(state.step - hp.pretrain_steps, hp.alpha, hp.lo, hp.hi, hp.max_iters)

                def objective(p: Any) -> tuple[jax.Array, Any]:
                    _, f_t, model_state = run(p["model"], state.model_state, xt, k_tgt)
                    d = disc.apply({"params": p["aux"][key_]}, gradient_reversal(jnp.concatenate([f_s, f_t]), coeff))
                    loss_d = domain_adversarial_loss(d[:n_s], d[n_s:])
                    return weight * loss_d, (loss_d, model_state, d)

                (total, (loss_d, model_state, d)), grads = jax.value_and_grad(objective, has_aux=True)(params)
                new_params, opt_state = masked_update(tx, grads, opt_state, params, masks["adapt"], True)
                grad_norm = optax.global_norm(_masked(grads, masks["adapt"]))
            else:
                def target_features(model_params: Any) -> tuple[jax.Array, Any]:
                    _, f_t, model_state = run(model_params, state.model_state, xt, k_tgt)
                    return f_t, model_state

                f_t, pullback, model_state = jax.vjp(target_features, params["model"], has_aux=True)

                def disc_objective(p: Any) -> tuple[jax.Array, Any]:
                    d = disc.apply({"params": p["aux"][key_]}, jnp.concatenate([f_s, f_t]))
                    loss_d = domain_adversarial_loss(d[:n_s], d[n_s:])
                    return weight * loss_d, (loss_d, d)

                (_, (loss_d, d)), grads = jax.value_and_grad(disc_objective, has_aux=True)(params)
                params_d, opt_state = masked_update(tx, grads, opt_state, params, masks["discriminator"], True)

                def mapping_objective(features: jax.Array) -> tuple[jax.Array, jax.Array]:
                    loss_m = inverted_label_loss(disc.apply({"params": params_d["aux"][key_]}, features))
                    return weight * loss_m, loss_m

                (total, loss_m), feature_grads = jax.value_and_grad(mapping_objective, has_aux=True)(f_t)
                grads = {"model": pullback(feature_grads)[0], "aux": jax.tree.map(jnp.zeros_like, params["aux"])}
                new_params, opt_state = masked_update(tx, grads, opt_state, params_d, masks["encoder"], False)
                grad_norm = optax.global_norm(_masked(grads, masks["encoder"]))
                metrics[f"loss/{key_}/mapping_loss"] = loss_m
                coeff = zero
            metrics.update({"loss": total, "grad_norm": grad_norm, f"loss/{key_}": loss_d,
                            f"loss/{key_}/disc_accuracy": domain_accuracy(d[:n_s], d[n_s:]),
                            f"loss/{key_}/grl_coeff": jnp.asarray(coeff, jnp.float32)})
            return new_params, opt_state, model_state, {**adda_state, "source_encoder": source_encoder}, metrics

        new_params, opt_state, model_state, new_adda, metrics = jax.lax.cond(
            state.step < hp.pretrain_steps, pretrain_phase, adapt_phase
        )
        new_state = state.replace(
            step=state.step + 1, params=new_params, model_state=model_state, opt_state=opt_state,
            term_states={**state.term_states, key_: new_adda},
        )
        return new_state, metrics

    return step


def _parts(parts: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """A method's unweighted term values as metrics (``loss/<key>``)."""
    return {f"loss/{k}": jnp.asarray(v, jnp.float32) for k, v in parts.items()}


def _masked(grads: Any, mask: Any) -> Any:
    """``grads`` with the leaves where ``mask`` is False zeroed (what an update actually applies)."""
    return jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
