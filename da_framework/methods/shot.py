"""The SHOT trainer: source training, then source-free adaptation of the encoder, in one run.

Liang, Hu & Feng, ICML 2020, as the authors' digits code runs it (tim-learn/SHOT
``digit/uda_digit.py``; the loss pieces and the defaults are in :mod:`da_framework.losses.shot`).
The method is ``cross_entropy(label_smoothing=0.1) + shot(...)``; the model's ``head`` is the
hypothesis h, every other model parameter the encoder g (backbone and bottleneck).  With
P = ``pretrain_steps``:

* steps 0..P-1 (SHOT's ``train_source``): the method's cross-entropy on the source batch alone,
  over g and h;
* steps P.. (``train_target``): h stays bit-identical (its optimiser slots untouched) and g is
  trained on the *target batch alone* -- no source example is read -- on
  ``ent_par * L_IM + cls_par * CE(h(g(x_t)), yhat[index])``.  With ``reset_optimizer`` the
  optimiser state (and so the learning-rate schedule's count) restarts at step P.
* the pseudo-label table yhat (the term's state) is rebuilt by :func:`~da_framework.losses.shot.
  cluster_pseudo_labels` from the eval-mode features and predictions of *every* target train
  example at step P and then every ``interval`` steps (0: one target epoch, ceil(n / batch)),
  through the loop's target pass (:mod:`da_framework.train.target_pass`).

The phase is chosen inside the compiled step (``lax.cond``), so the step compiles once.
Metrics: ``loss``, ``loss/cross_entropy`` (phase 2: 0, no source batch is read),
``source_train_accuracy`` (phase 2: 0), ``loss/<key>`` (the target objective; 0 in phase 1),
``loss/<key>/im``, ``/pseudo_ce``, ``/phase`` and ``/pseudo_label_accuracy`` -- the accuracy of
the current table against the target train labels, a diagnostic the training never reads
(SHOT prints the same number).

Differences from SHOT's code: one run and one optimiser for both phases (SHOT saves the source
model and builds a new SGD for the target phase: ``reset_optimizer`` restarts the same
optimiser; ``phase_schedule=True`` gives each phase SHOT's own ``(1 + 10 i / T)^-0.75``, by
scaling the updates of a constant-rate optimiser); SHOT keeps the source checkpoint with the best *source test* accuracy, this keeps
the last; SHOT's hypothesis is a weight-normalised linear layer, here the model's ``head``;
the batches are drawn with the run's sampler (full batches), SHOT's loader keeps a last short one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from da_framework.data.domain import INDEX
from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.losses.shot import TRAINER, ShotHparams, check_hparams, cluster_pseudo_labels, shot_target_loss
from da_framework.methods.mcd import masked_update
from da_framework.models.classifier import Classifier
from da_framework.train.method import LossTerm, Method
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, make_apply_model, train_forward
from da_framework.train.target_pass import TargetPassStep


def _check_method(method: Method, total_steps: int, compute_dtype: str, num_sources: int,
                  num_targets: int) -> tuple[LossTerm, Method, ShotHparams]:
    """The ``shot`` term, the source-training method (its cross-entropy) and the checked hyper-parameters."""
    shot = [t for t in method.terms if t.loss == TRAINER]
    others = [t for t in method.terms if t.loss != TRAINER]
    if len(shot) != 1 or len(others) != 1 or others[0].loss != "cross_entropy":
        raise LossError(f"shot: write the method as 'cross_entropy + shot' (the source training's loss, then the "
                        f"source-free phase), got {method.name!r}")
    term = shot[0]
    if term.weight != 1.0 or term.schedule != "constant":
        raise LossError(f"shot: set the trade-offs as shot(cls_par=..., ent_par=...); the term takes weight 1 and no "
                        f"schedule, got {term.weight!r}*shot@{term.schedule}")
    if num_sources != 1 or num_targets != 1:
        raise LossError(f"shot adapts from one source to one target, got {num_sources} source(s) and "
                        f"{num_targets} target(s)")
    if compute_dtype != "float32":
        raise LossError(f"shot: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    hp = check_hparams(**{**get_loss(TRAINER).hparams, **dict(term.hparams)})
    if hp.pretrain_steps >= total_steps:
        raise LossError(f"shot: pretrain_steps must be < steps (the run's {total_steps} steps, which include the "
                        f"source training), got {hp.pretrain_steps}; set shot(pretrain_steps=N) or more steps")
    return term, Method(method.name, tuple(others)), hp


class ShotStep(TargetPassStep):
    """SHOT's compiled step and its target-pass hooks (module doc)."""

    def __init__(self, model: Classifier, method: Method, tx: optax.GradientTransformation, total_steps: int,
                 input_key: str = "image", compute_dtype: str = "float32", num_sources: int = 1,
                 num_targets: int = 1) -> None:
        term, self.source_method, self.hp = _check_method(method, total_steps, compute_dtype, num_sources,
                                                          num_targets)
        self.key, self.model, self.tx, self.total_steps, self.input_key = (
            term.key, model, tx, total_steps, input_key)

    def check_config(self, config: Any) -> None:
        """``phase_schedule`` applies SHOT's schedule itself, so the run's own must be constant."""
        if self.hp.phase_schedule and config.lr_schedule != "constant":
            raise LossError(f"shot(phase_schedule=True) applies SHOT's per-phase schedule itself; set "
                            f"lr_schedule=constant, got {config.lr_schedule!r}")

    def phase_factor(self, step: jax.Array) -> jax.Array:
        """SHOT's ``(1 + 10 i / T)^-0.75`` of the update at ``step`` (1 without ``phase_schedule``)."""
        if not self.hp.phase_schedule:
            return jnp.ones((), jnp.float32)
        p, s = self.hp.pretrain_steps, self.total_steps
        i = jnp.where(step < p, step + 1, step - p + 1).astype(jnp.float32)
        length = jnp.where(step < p, p, s - p).astype(jnp.float32)
        return (1.0 + 10.0 * i / length) ** -0.75

    def prepare(self, state: TrainState, num_examples: int) -> TrainState:
        """The pseudo-label table sized ``num_examples`` (zeros until the first refresh at ``pretrain_steps``)."""
        table = {**state.term_states[self.key], "labels": jnp.zeros((num_examples,), jnp.int32)}
        return state.replace(term_states={**state.term_states, self.key: table})

    def due(self, step: int, num_examples: int, batch_size: int) -> bool:
        """At ``pretrain_steps``, then every ``interval`` steps (0: ceil(num_examples / batch_size))."""
        every = self.hp.interval or math.ceil(num_examples / batch_size)
        return step >= self.hp.pretrain_steps and (step - self.hp.pretrain_steps) % every == 0

    def refresh(self, state: TrainState, outputs: Mapping[str, np.ndarray]) -> TrainState:
        """The table rebuilt by :func:`cluster_pseudo_labels` from the whole target split's outputs."""
        probs = jax.nn.softmax(jnp.asarray(outputs["logits"], jnp.float32), axis=-1)
        labels = cluster_pseudo_labels(jnp.asarray(outputs["features"]), probs, self.hp.rounds)
        accuracy = jnp.mean((labels == jnp.asarray(outputs["label"])).astype(jnp.float32))  # reported, never trained on
        table = {**state.term_states[self.key], "labels": labels, "label_accuracy": accuracy}
        return state.replace(term_states={**state.term_states, self.key: table})

    def __call__(self, state: TrainState, source_batch: Mapping[str, jax.Array],
                 target_batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[TrainState, Metrics]:
        """One SHOT step ``(state, source_batch, target_batch, key) -> (state, metrics)``."""
        hp, key_ = self.hp, self.key
        tx = scaled_updates(self.tx, self.phase_factor(state.step)) if hp.phase_schedule else self.tx
        xs, ys, xt = source_batch[self.input_key], source_batch["label"], target_batch[self.input_key]
        if INDEX not in target_batch:
            raise LossError("shot: the target batches carry no 'index' field; train it through da_framework's "
                            "train() (its loop adds the field for a target-pass trainer)")
        k_model, k_loss, k_run = jax.random.split(key, 3)
        params, table, zero = state.params, state.term_states[key_], jnp.zeros((), jnp.float32)
        trainable = {"model": {k: jax.tree.map(lambda _, k=k: k != "head", v) for k, v in params["model"].items()},
                     "aux": jax.tree.map(lambda _: False, params["aux"])}
        everything = jax.tree.map(lambda _: True, trainable)
        progress = jnp.minimum(state.step.astype(jnp.float32) / self.total_steps, 1.0)
        diag = {f"loss/{key_}/pseudo_label_accuracy": table["label_accuracy"]}

        def source_phase() -> tuple[Any, Any, Any, Metrics]:
            def objective(p: Any) -> tuple[jax.Array, Any]:
                logits, feats, model_state = train_forward(self.model, p["model"], state.model_state, xs, k_run)
                inputs = LossInputs(
                    source_features=feats, target_features=feats[:0], source_logits=logits,
                    target_logits=logits[:0], source_labels=ys, progress=progress, key=k_loss, source_inputs=xs,
                    target_inputs=xt, params=p["model"], apply_model=make_apply_model(self.model, state.model_state,
                                                                                       k_model))
                out = self.source_method.loss(p["aux"], state.term_states, inputs)
                return out.total, (out, model_state, logits)

            (total, (out, model_state, logits)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            new_params, opt_state = masked_update(tx, grads, state.opt_state, params, everything, True)
            metrics = {"loss": total, "source_train_accuracy": jnp.mean(jnp.argmax(logits, -1) == ys),
                       "grad_norm": optax.global_norm(grads),
                       **{f"loss/{k}": jnp.asarray(v, jnp.float32) for k, v in out.parts.items()},
                       f"loss/{key_}": zero, f"loss/{key_}/im": zero, f"loss/{key_}/pseudo_ce": zero,
                       f"loss/{key_}/phase": jnp.float32(1), **diag}
            return new_params, opt_state, model_state, metrics

        def target_phase() -> tuple[Any, Any, Any, Metrics]:
            opt_state = state.opt_state
            if hp.reset_optimizer:  # SHOT's fresh optimiser and schedule for the target phase
                opt_state = jax.lax.cond(state.step == hp.pretrain_steps, lambda: tx.init(params), lambda: opt_state)
            pseudo = table["labels"][target_batch[INDEX]]

            def objective(p: Any) -> tuple[jax.Array, Any]:
                logits, _, model_state = train_forward(self.model, p["model"], state.model_state, xt, k_run)
                loss, parts = shot_target_loss(logits, pseudo, hp.cls_par, hp.ent_par, hp.diversity_weight)
                return loss, (parts, model_state)

            (total, (parts, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            new_params, opt_state = masked_update(tx, grads, opt_state, params, trainable, True)
            grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, trainable)
            metrics = {"loss": total, "source_train_accuracy": zero, "grad_norm": optax.global_norm(grads),
                       **{f"loss/{t.key}": zero for t in self.source_method.terms},
                       f"loss/{key_}": total, f"loss/{key_}/im": parts["im"],
                       f"loss/{key_}/pseudo_ce": parts["pseudo_ce"], f"loss/{key_}/phase": jnp.float32(2), **diag}
            return new_params, opt_state, model_state, metrics

        new_params, opt_state, model_state, metrics = jax.lax.cond(
            state.step < hp.pretrain_steps, source_phase, target_phase)
        new_state = state.replace(step=state.step + 1, params=new_params, model_state=model_state, opt_state=opt_state)
        return new_state, metrics


def scaled_updates(tx: optax.GradientTransformation, factor: jax.Array) -> optax.GradientTransformation:
    """``tx`` with every update multiplied by ``factor`` (same state): for SGD, momentum and Adam alike
    the same as running ``tx`` at ``factor`` times its learning rate."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, state = tx.update(updates, state, params)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state

    return optax.GradientTransformation(tx.init, update)


def make_shot_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> ShotStep:
    """Builds SHOT's step (module doc); same signature as :func:`~da_framework.train.step.make_train_step`.

    Raises:
      LossError: for a method other than ``cross_entropy + shot``, a weight or schedule on the
        term, ``pretrain_steps`` outside [1, total_steps), a bad hyper-parameter, more than one
        source or target, or a compute dtype other than float32.
    """
    return ShotStep(model, method, tx, total_steps, input_key, compute_dtype, num_sources, num_targets)
