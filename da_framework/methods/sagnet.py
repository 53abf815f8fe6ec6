"""The SagNet training step: DomainBed's three updates (content, style, adversarial) in one jitted function.

Nam, Lee, Park, Yoon & Yoo, "Reducing Domain Gap by Reducing Style Bias", CVPR 2021, Algorithm
1, as facebookresearch/DomainBed ``domainbed/algorithms.py`` class ``SagNet.update`` (commit
22002ea).  F is the model's featurizer (backbone and bottleneck), C its ``head``, S the
``sagnet`` term's style classifier (:mod:`da_framework.losses.sagnet`, with ``randomize``).  On
the pooled source batch x, y (the training environments concatenated, as DomainBed's
``all_x``, ``all_y``), each sub-step with its own draws (alpha, permutation, dropout key):

1. content: ``L_c = CE(C(randomize(F(x), "style")), y)``; update F and C;
2. style: ``L_s = CE(S(randomize(F(x), "content")), y)`` (F after step 1); update S;
3. adversarial: ``L_adv = sag_w_adv * -mean(log_softmax(S(randomize(F(x), "content"))))``
   (F after 1, S after 2); update F.

DomainBed has three Adams: ``optimizer_f`` (stepped in 1 and 3), ``optimizer_c`` (1),
``optimizer_s`` (2).  Here the run's one optimiser state over ``{"model", "aux"}`` serves all
three through :func:`~da_framework.methods.mcd.masked_update`: a sub-step changes only its
parameters and their optimiser slots (momentum / Adam moments); the others stay
bit-identical.  F's slots are shared by steps 1 and 3, as ``optimizer_f``'s are.  The step
counter (Adam's bias correction, the learning-rate schedule) is shared and advances once per
training step, so every sub-step of training step n (1-based) uses t = n.

Differences from DomainBed: its ``optimizer_f`` takes two steps per update, so its bias
correction uses t = 2n - 1 (step 1) and 2n (step 3) where this uses n (C's and S's t = n agree);
with SGD (no counter-dependent terms) the updates are DomainBed's.  The test environment's
batch is not forwarded (DomainBed's DG); the model runs in train mode in all three forwards,
each updating normalisation statistics in turn (MNIST_CNN has none).  S is one linear layer
(DomainBed: ``nonlinear_classifier=False``, its SMALL_IMAGES setting); a deep model head is
refused.  Metrics: ``loss`` (L_c), ``loss/<key>/content``, ``/style``, ``/adversarial`` (L_adv
with its weight, as DomainBed's ``loss_adv``), ``source_train_accuracy`` (step 1's randomised
logits), ``grad_norm`` (step 1's gradient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from da_framework.losses.classification import cross_entropy
from da_framework.losses.dg_trainers import batch_accuracy, step_scale
from da_framework.losses.registry import LossError, get_loss
from da_framework.losses.sagnet import (
    TRAINER,
    adversarial_loss,
    check_sag_w_adv,
    randomization_draws,
    randomize,
    style_logits,
)
from da_framework.methods.mcd import masked_update
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.schedules import get_schedule
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep


def sagnet_masks(params: Mapping[str, Any], term_key: str) -> tuple[Any, Any, Any]:
    """Boolean trees over ``{"model", "aux"}``: (content step: F and C, style step: S, adversarial step: F)."""

    def tree(model_flag, aux_flag):
        model = {k: jax.tree.map(lambda _, k=k: model_flag(k), v) for k, v in params["model"].items()}
        aux = {k: jax.tree.map(lambda _, k=k: aux_flag(k), v) for k, v in params["aux"].items()}
        return {"model": model, "aux": aux}

    content = tree(lambda k: True, lambda k: False)
    style = tree(lambda k: False, lambda k: k == term_key)
    adversarial = tree(lambda k: k != "head", lambda k: False)
    return content, style, adversarial


def _sagnet_term(method: Method, model: Any, compute_dtype: str) -> tuple[Any, float]:
    """The method's ``sagnet`` term and its checked ``sag_w_adv`` (one-line LossErrors)."""
    if [t.loss for t in method.terms] != [TRAINER]:
        raise LossError(f"sagnet is a whole objective (content, style and adversarial losses): write the method as "
                        f"'sagnet' alone, got {method.name!r}")
    if compute_dtype != "float32":
        raise LossError(f"sagnet: its step runs in float32 only, got compute_dtype={compute_dtype!r}")
    if tuple(getattr(model, "head_hidden", ())):
        raise LossError("sagnet: the content classifier is the model's head and must be one linear layer "
                        "(DomainBed's nonlinear_classifier=False); drop model_kwargs head_hidden")
    if not hasattr(model, "features"):
        raise LossError(f"sagnet: needs a Classifier (backbone -> head), got {type(model).__name__}")
    term = method.terms[0]
    hp = {**get_loss(TRAINER).hparams, **dict(term.hparams)}
    return term, check_sag_w_adv(hp["sag_w_adv"])


def make_sagnet_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds SagNet's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the method
    is the ``sagnet`` term alone (its weight and schedule, at progress ``step / total_steps``,
    scale L_c and L_s; L_adv has ``sag_w_adv``, as DomainBed), the source batch is the pooled
    training environments and the target batch is not read.  The sub-steps' keys are
    ``jax.random.split(key, 3)``, each turned into that sub-step's draws by
    :func:`~da_framework.losses.sagnet.randomization_draws`.

    Raises:
      LossError: for a method other than ``sagnet`` alone, a compute dtype other than float32,
        a deep model head or a bad ``sag_w_adv``.
    """
    del num_sources, num_targets
    term, w_adv = _sagnet_term(method, model, compute_dtype)
    key_ = term.key
    schedule = get_schedule(term.schedule)

    def features(model_params: Any, model_state: Any, x: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        mutable = list(model_state)
        out = model.apply({"params": model_params, **model_state}, x, train=True, rngs={"dropout": key},
                          mutable=mutable if mutable else False, method=Classifier.features)
        f, new_state = out if mutable else (out, model_state)
        return f, dict(new_state) if mutable else model_state

    def content_logits(model_params: Any, f: jax.Array) -> jax.Array:
        return model.apply({"params": model_params}, f, method=lambda m, z: m.head(z))

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        del target_batch
        x, y = source_batch[input_key], source_batch["label"]
        if key_ not in state.params["aux"]:
            raise LossError(f"sagnet: the train state has no style classifier under aux/{key_}")
        content_mask, style_mask, adv_mask = sagnet_masks(state.params, key_)
        draws = [randomization_draws(k, x.shape[0]) for k in jax.random.split(key, 3)]
        params, opt_state = state.params, state.opt_state
        weight = step_scale(state.step, total_steps, term, schedule)

        def loss_c(p, ms):
            alpha, perm, k_model = draws[0]
            f, new_ms = features(p["model"], ms, x, k_model)
            logits = content_logits(p["model"], randomize(f, "style", alpha, perm))
            return weight * cross_entropy(logits, y), (new_ms, logits)

        (value_c, (model_state, logits_c)), grads = jax.value_and_grad(loss_c, has_aux=True)(params, state.model_state)
        grad_norm = optax.global_norm(grads)
        params, opt_state = masked_update(tx, grads, opt_state, params, content_mask, advance_counters=False)

        def style_out(p, ms, draw):
            _, perm, k_model = draw
            f, new_ms = features(p["model"], ms, x, k_model)
            return style_logits(p["aux"][key_], randomize(f, "content", None, perm)), new_ms

        def loss_s(p, ms):
            logits, new_ms = style_out(p, ms, draws[1])
            return weight * cross_entropy(logits, y), new_ms

        (value_s, model_state), grads = jax.value_and_grad(loss_s, has_aux=True)(params, model_state)
        params, opt_state = masked_update(tx, grads, opt_state, params, style_mask, advance_counters=False)

        def loss_adv(p, ms):
            logits, new_ms = style_out(p, ms, draws[2])
            return w_adv * adversarial_loss(logits), new_ms

        (value_adv, model_state), grads = jax.value_and_grad(loss_adv, has_aux=True)(params, model_state)
        params, opt_state = masked_update(tx, grads, opt_state, params, adv_mask, advance_counters=True)

        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        metrics = {
            "loss": value_c,
            "source_train_accuracy": batch_accuracy(logits_c, y),
            "grad_norm": grad_norm,
            f"loss/{key_}": value_c,
            f"loss/{key_}/content": value_c,
            f"loss/{key_}/style": value_s,
            f"loss/{key_}/adversarial": value_adv,
        }
        return new_state, metrics

    return step
