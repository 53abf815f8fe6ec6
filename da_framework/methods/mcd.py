"""The MCD training step: three sub-steps per batch in one jitted pure function.

Saito et al., "Maximum Classifier Discrepancy for Unsupervised Domain Adaptation", CVPR 2018,
Sec. 3.2.  With G the generator (every model parameter except ``head``), F1 the model's
``head`` and F2 the ``mcd`` term's auxiliary head:

* Step A: minimise the method's loss (source CE of F1 and, through the ``mcd`` term, of F2)
  over G, F1, F2;
* Step B: minimise  L_s - w * d(F1(G(x_t)), F2(G(x_t)))  over F1, F2 (G frozen);
* Step C: minimise  w * d(F1(G(x_t)), F2(G(x_t)))  over G (F1, F2 frozen), ``num_k`` times.

Every sub-step leaves the frozen parameters bit-identical and their optimiser slots
untouched, as with the paper's two optimisers; the optimiser's step counter (and so the
learning-rate schedule) advances once per training step.

Deep heads (tllib's ``ImageClassifierHead``; the model's ``head_hidden`` and the term's
``mcd(head_hidden=...)``, which must agree): as in tllib's ``mcd.py``, every sub-step runs
G, F1 and F2 on the joint batch ``cat(x_s, x_t)`` in train mode, so the heads' BatchNorm
normalises over both domains and step C takes the discrepancy on the target half of a joint
pass.  F1's running statistics (the model's ``batch_stats`` under ``head``) are updated by
every sub-step's pass (A, B and the ``num_k`` C passes), as torch updates them on every
train-mode forward.  Dropout keys: step A and B use their sub-step key as the standard step
does (model dropout from one half, the ``mcd`` term's, hence F2's, from ``Method.loss``'s
split of the other); each C repeat splits its own key into a model key and an F2 key.  The
single-Dense default keeps its original passes (step C on the target batch only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from da_framework.losses.mcd import (
    check_second_head,
    classifier_discrepancy,
    deep_second_classifier_logits,
    second_classifier_logits,
)
from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.state import TrainState
from da_framework.train.step import Metrics, TrainStep, domain_views, make_apply_model

TERM = "mcd"


def classifier_mask(params: Mapping[str, Any], term_key: str = TERM) -> Any:
    """Boolean tree over ``{"model", "aux"}`` params: True for F1 (``model/head``) and F2 (``aux/<term_key>``)."""
    model = {k: jax.tree.map(lambda _, k=k: k == "head", v) for k, v in params["model"].items()}
    aux = {k: jax.tree.map(lambda _, k=k: k == term_key, v) for k, v in params["aux"].items()}
    return {"model": model, "aux": aux}


def _opt_slot_flags(opt_state: Any, params: Any, mask: Any, counters: bool) -> Any:
    """Per optimiser-state leaf: keep its new value? (its parameter's mask, or ``counters`` for non-slots).

    A leaf is the slot of a parameter when the parameter's path is a suffix of the leaf's
    path (``trace/model/head/kernel`` for SGD momentum, ``mu/...``, ``nu/...`` for Adam).
    """
    trainable = {
        tuple(path): m for (path, _), m in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(mask))
    }

    def flag(path: tuple[Any, ...], _: Any) -> bool:
        for i in range(len(path)):
            if tuple(path[i:]) in trainable:
                return trainable[tuple(path[i:])]
        return counters

    return jax.tree_util.tree_map_with_path(flag, opt_state)


def masked_update(
    tx: optax.GradientTransformation,
    grads: Any,
    opt_state: Any,
    params: Any,
    mask: Any,
    advance_counters: bool,
) -> tuple[Any, Any]:
    """One optimiser update of the parameters where ``mask`` is True; the rest stay bit-identical.

    Frozen parameters keep their optimiser slots (momentum, Adam moments); counters (the
    schedule's step count) advance only when ``advance_counters``.

    Returns:
      (new params, new optimiser state).
    """
    grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = jax.tree.map(lambda p, u, m: (p + u).astype(p.dtype) if m else p, params, updates, mask)
    keep_new = _opt_slot_flags(opt_state, params, mask, advance_counters)
    new_opt = jax.tree.map(lambda k, new, old: new if k else old, keep_new, new_opt, opt_state)
    return new_params, new_opt


def make_mcd_step(
    model: Classifier,
    method: Method,
    tx: optax.GradientTransformation,
    total_steps: int,
    input_key: str = "image",
    compute_dtype: str = "float32",
    num_sources: int = 1,
    num_targets: int = 1,
) -> TrainStep:
    """Builds MCD's step ``(state, source_batch, target_batch, key) -> (state, metrics)``.

    Same signature and contract as :func:`da_framework.train.step.make_train_step`; the
    method must contain the ``mcd`` term (whose hyper-parameters ``num_k`` and
    ``discrepancy_weight`` set the schedule).  Only ``compute_dtype="float32"`` is supported.
    With several sources or targets the method's terms get one view per domain (as in the
    standard step) and the discrepancy of steps B and C is taken over the pooled target batch.
    """
    if compute_dtype != "float32":
        raise ValueError(
            f"MCD's step runs in float32 only, got compute_dtype={compute_dtype!r}; set compute_dtype=float32"
        )
    terms = [t for t in method.terms if t.loss == TERM]
    if not terms:
        raise LossError(f"make_mcd_step: method {method.name!r} has no 'mcd' term; write e.g. 'cross_entropy + mcd'")
    hp, term_key = {**get_loss(TERM).hparams, **dict(terms[0].hparams)}, terms[0].key
    num_k, weight = int(hp["num_k"]), float(hp["discrepancy_weight"])
    if num_k < 1:
        raise LossError(f"mcd: num_k must be >= 1, got {num_k}")
    f2 = (check_second_head(hp["head_hidden"], hp["head_dropout"], hp["head_norm"]),
          float(hp["head_dropout"]), hp["head_norm"])
    f1_hidden = tuple(getattr(model, "head_hidden", ()))
    f1 = (f1_hidden, float(getattr(model, "head_dropout", 0.5)), getattr(model, "head_norm", "batch"))
    deep = bool(f2[0])
    if f1[0] != f2[0] or (deep and f1 != f2):
        raise LossError(
            f"mcd: F2 (the term's head_hidden={f2[0]!r}, head_dropout={f2[1]!r}, head_norm={f2[2]!r}) must match the "
            f"model's head F1 (head_hidden={f1[0]!r}, head_dropout={f1[1]!r}, head_norm={f1[2]!r}); set both alike"
        )
    disc_metric = f"{term_key}/discrepancy"

    def forward(params: Any, model_state: Any, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        mutable = list(model_state)
        variables = {"params": params, **model_state}
        out = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable if mutable else False)
        (logits, feats), new_state = out if mutable else (out, {})
        return logits, feats, dict(new_state) if mutable else model_state

    def discrepancy(params: Any, model_state: Any, xs: jax.Array, xt: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        if not deep:
            logits, feats, new_state = forward(params["model"], model_state, xt, key)
            logits2 = second_classifier_logits(params["aux"][term_key], feats, logits)
            return classifier_discrepancy(logits, logits2), new_state
        k_model, k_f2 = jax.random.split(key)
        logits, feats, new_state = forward(params["model"], model_state, jnp.concatenate([xs, xt]), k_model)
        logits2 = deep_second_classifier_logits(params["aux"][term_key], feats, logits.shape[-1], *f2, k_f2)
        n_s = xs.shape[0]
        return classifier_discrepancy(logits[n_s:], logits2[n_s:]), new_state

    def source_loss(params, state, source_batch, target_batch, key, progress):
        """The method's loss (source CE of both heads) and, on the same pass, the target discrepancy."""
        k_model, k_loss = jax.random.split(key)
        xs, xt = source_batch[input_key], target_batch[input_key]
        n_s = xs.shape[0]
        joint = jnp.concatenate([xs, xt])
        logits, feats, new_state = forward(params["model"], state.model_state, joint, k_model)
        domains = ()
        if num_sources > 1 or num_targets > 1:
            domains = domain_views(feats, logits, joint, source_batch["label"], n_s, num_sources, num_targets)
        inputs = LossInputs(
            source_features=feats[:n_s],
            target_features=feats[n_s:],
            source_logits=logits[:n_s],
            target_logits=logits[n_s:],
            source_labels=source_batch["label"],
            progress=progress,
            key=k_loss,
            source_inputs=xs,
            target_inputs=xt,
            params=params["model"],
            apply_model=make_apply_model(model, state.model_state, k_model),
            domains=domains,
        )
        out = method.loss(params["aux"], state.term_states, inputs)
        if deep:  # the term ran F2 once on the joint features: its target half's discrepancy
            disc = out.metrics[disc_metric]
        else:
            logits2_t = second_classifier_logits(params["aux"][term_key], feats[n_s:], logits[n_s:])
            disc = classifier_discrepancy(logits[n_s:], logits2_t)
        accuracy = jnp.mean(jnp.argmax(logits[:n_s], -1) == source_batch["label"])
        return out.total, (disc, out, new_state, accuracy)

    def step(
        state: TrainState,
        source_batch: Mapping[str, jax.Array],
        target_batch: Mapping[str, jax.Array],
        key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        progress = jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0)
        k_a, k_b, k_c = jax.random.split(key, 3)
        f_mask = classifier_mask(state.params, term_key)
        g_mask = jax.tree.map(lambda m: not m, f_mask)  # static Python bools
        all_mask = jax.tree.map(lambda _: True, f_mask)
        params, opt_state = state.params, state.opt_state

        # Step A: G, F1, F2 on the source loss.
        (total_a, (_, out_a, model_state, accuracy)), grads = jax.value_and_grad(source_loss, has_aux=True)(
            params, state, source_batch, target_batch, k_a, progress
        )
        grad_norm_a = optax.global_norm(grads)
        params, opt_state = masked_update(tx, grads, opt_state, params, all_mask, advance_counters=True)
        state_a = state.replace(model_state=model_state)

        # Step B: F1, F2 maximise the target discrepancy, keeping the source loss.
        def loss_b(p):
            total, (disc, _, new_state, _) = source_loss(p, state_a, source_batch, target_batch, k_b, progress)
            return total - weight * disc, (disc, new_state)

        (_, (disc_b, model_state)), grads = jax.value_and_grad(loss_b, has_aux=True)(params)
        params, opt_state = masked_update(tx, grads, opt_state, params, f_mask, advance_counters=False)

        # Step C: G minimises it, num_k times.
        def loss_c(p, ms, k):
            disc, new_state = discrepancy(p, ms, source_batch[input_key], target_batch[input_key], k)
            return weight * disc, (disc, new_state)

        disc_c = []
        for k in jax.random.split(k_c, num_k):  # unrolled: XLA's CPU while-loops run convolutions far slower
            (_, (disc, model_state)), g = jax.value_and_grad(loss_c, has_aux=True)(params, model_state, k)
            params, opt_state = masked_update(tx, g, opt_state, params, g_mask, advance_counters=False)
            disc_c.append(disc)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            term_states=method.update_states(
                out_a.states, params["model"], jnp.minimum((state.step + 1) / total_steps, 1)
            ),
        )
        metrics = {
            "loss": total_a,
            "source_train_accuracy": accuracy,
            "grad_norm": grad_norm_a,
            "loss/mcd_discrepancy_b": disc_b,
            "loss/mcd_discrepancy_c": disc_c[-1],
        }
        metrics.update({f"loss/{k}": v for k, v in {**out_a.parts, **out_a.metrics}.items()})
        return new_state, metrics

    return step

