"""Methods: weighted sums of registered loss terms.

A method is data, not a trainer subclass::

    Method((LossTerm("cross_entropy"), LossTerm("dann", weight=1.0)))

and has a one-line spelling used by configs and the CLI (``parse_method``)::

    "cross_entropy + 0.5*mmd"                      # weights
    "cross_entropy + 1.0*dann@linear"               # a weight schedule after '@'
    "cross_entropy + 0.1*mmd(estimator=unbiased)"   # loss hyper-parameters in brackets
    "dann"                                          # a named preset (see PRESETS)
    "cross_entropy + 1.0*jan(alphas=(1.0, 2.0))"    # hyper-parameters are Python literals
    "cross_entropy - 0.1*entropy"                   # a negative weight: '-' in place of '+'
    "cross_entropy + 0.1*mmd as mmd_a + 0.2*mmd(estimator=unbiased) as mmd_b"  # one loss twice

Grammar: terms ``[weight*]loss[(name=value, ...)][@schedule][ as key]`` joined by ``+`` or ``-``.
A term's *key* names its metric (``loss/<key>``), its auxiliary parameters and its grid keys in
sweeps; it defaults to the loss name, so a loss used twice needs ``as <key>`` on each use.  The
bracket is read as the keyword arguments of a Python call: each value is a Python literal
(number, quoted string, tuple, list, True/False/None) or a bare word, which is a string.  A
weight is a finite, unsigned number (default 1.0).  A negative weight is written only with the
explicit ``-`` separator (``a - 0.1*entropy`` means weight -0.1; a leading ``-`` negates the
first term); a signed number in the weight position (``a + -0.1*entropy``) is an error, so a
stray sign cannot flip a loss by accident.  :meth:`Method.spec` writes this grammar back.

The total loss at progress p is  sum_i w_i * schedule_i(p) * loss_i(inputs, **hparams_i).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from da_framework.losses.registry import LossError, LossInputs, StatefulTerm, TermState, get_loss
from da_framework.train.schedules import get_schedule


def _stateless_init(key: str, fn: str) -> str:
    """The error for a term whose ``fn`` returns a state although its ``init`` returned none."""
    return (f"term {key!r}: {fn} returned a state but init's TermState.state was empty, so it would be "
            f"dropped; return the state's initial value from init (TermState(params, state))")

class MethodLoss(NamedTuple):
    """A method's loss on one step (:meth:`Method.loss`).

    Attributes:
      total: the weighted sum of the terms (the scalar to differentiate).
      parts: each term's unweighted value by key (logged as ``loss/<key>``).
      states: the stateful terms' new states by key.
      metrics: the terms' extra metrics, keyed ``<key>/<name>``.
    """

    total: jax.Array
    parts: dict[str, jax.Array]
    states: dict[str, Any]
    metrics: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted loss term of a method.

    Attributes:
      loss: registered loss name.
      weight: constant weight.
      schedule: name of a weight schedule (``da_framework.train.schedules``).
      hparams: keyword hyper-parameters passed to the loss.
      name: the term's key when it differs from the loss name (``... as <name>``), or None.
    """

    loss: str
    weight: float = 1.0
    schedule: str = "constant"
    hparams: tuple[tuple[str, Any], ...] = ()
    name: str | None = None

    @property
    def key(self) -> str:
        """The name this term's metric, auxiliary parameters and sweep grid keys go by."""
        return self.name or self.loss

    def validate(self) -> None:
        """Checks that the weight is a finite number and the loss, schedule and hyper-parameters exist."""
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real) or not math.isfinite(self.weight):
            raise LossError(f"weight of loss {self.loss!r} must be a finite number, got {self.weight!r}")
        if self.name is not None and not (isinstance(self.name, str) and self.name.isidentifier()):
            raise LossError(f"term key {self.name!r} of loss {self.loss!r} must be an identifier (letters, digits, '_')")
        spec = get_loss(self.loss)
        get_schedule(self.schedule)
        for name, _ in self.hparams:
            if name not in spec.hparams:
                valid = ", ".join(spec.hparams) or "none"
                raise LossError(f"loss {self.loss!r} has no hyper-parameter {name!r}; valid: {valid}")
        if spec.stateful:
            spec.term(**dict(self.hparams))  # the factory checks its hyper-parameters' values


PRESETS: dict[str, str] = {
    "source_only": "cross_entropy",
    "dann": "cross_entropy + 1.0*dann",
    "dan": "cross_entropy + 1.0*mmd",
    "coral": "cross_entropy + 1.0*coral",
    "cmd": "cross_entropy + 1.0*cmd",
    "jan": "cross_entropy + 1.0*jan",
    "mcc": "cross_entropy + 1.0*mcc",
    "bnm": "cross_entropy + 1.0*bnm",
    "shot_im": "cross_entropy + 1.0*shot_im",
    "entropy": "cross_entropy + 0.1*entropy",
    "swd": "cross_entropy + 1.0*swd",
    "l2sp": "cross_entropy + 1.0*l2sp",
    "bss": "cross_entropy + 0.001*bss",
    "cdan": "cross_entropy + 1.0*cdan",
    "cdan_e": "cross_entropy + 1.0*cdan_e",
    "mdd": "cross_entropy + 1.0*mdd",
    "fixmatch": "cross_entropy + 1.0*fixmatch",
    "mean_teacher": "cross_entropy + 10.0*mean_teacher@dann_ramp",
    "mcd": "cross_entropy + 1.0*mcd",
    # tllib examples/domain_adaptation/image_classification: bsp.py --trade-off-bsp 2e-4
    # (bsp.sh's digits lines: 1e-4); afn.py --trade-off-norm 0.05, --delta 1.
    "bsp": "cross_entropy + 1.0*dann + 0.0002*bsp",
    "afn": "cross_entropy + 0.05*afn",
    "m3sda": "cross_entropy + 1.0*m3sda",
    # tim-learn/SHOT digit/: source training with label smoothing 0.1, then source-free
    # adaptation (digit.sh: --cls_par 0.1); cls_par=0 is SHOT-IM without source data.
    "shot": "cross_entropy(label_smoothing=0.1) + shot",
    "shot_im_source_free": "cross_entropy(label_smoothing=0.1) + shot(cls_par=0.0)",
}
PRESETS["mmd"] = PRESETS["dan"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A named, weighted sum of loss terms."""

    name: str
    terms: tuple[LossTerm, ...]

    def __post_init__(self) -> None:
        keys = [t.key for t in self.terms]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise LossError(
                f"method {self.name!r} has two terms keyed {', '.join(map(repr, twice))}; a loss used twice needs "
                f"a key on each use, e.g. '0.1*{twice[0]} as {twice[0]}_a + 0.2*{twice[0]} as {twice[0]}_b'"
            )
        for term in self.terms:
            term.validate()

    def stateful_terms(self) -> dict[str, StatefulTerm]:
        """The :class:`StatefulTerm` of each stateful term, by term key, in term order."""
        out = {}
        for term in self.terms:
            spec = get_loss(term.loss)
            if spec.stateful:
                out[term.key] = spec.term(**dict(term.hparams))
        return out

    def init(self, key: jax.Array, inputs: LossInputs) -> tuple[dict[str, Any], dict[str, Any]]:
        """Initialises the stateful terms on example step inputs.

        The i-th stateful term (in term order) gets the i-th of 16 keys split from ``key``.

        Returns:
          ``(params, states)``: the terms' trainable parameters and their other state, each
          a dict by term key holding only the terms that have some.
        """
        terms = self.stateful_terms()
        if len(terms) > 16:
            raise LossError(f"method {self.name!r} has {len(terms)} stateful terms; at most 16 are supported")
        params: dict[str, Any] = {}
        states: dict[str, Any] = {}
        for (name, term), k in zip(terms.items(), jax.random.split(key, 16)):
            term_state = term.init(k, inputs)
            if not isinstance(term_state, TermState):
                raise LossError(f"term {name!r}: init must return a TermState, got {type(term_state).__name__}")
            if jax.tree.leaves(term_state.params):
                params[name] = term_state.params
            if jax.tree.leaves(term_state.state):
                states[name] = term_state.state
        return params, states

    def update_states(self, states: dict[str, Any], model_params: Any, progress: jax.Array) -> dict[str, Any]:
        """Runs the terms' ``update`` functions after an optimiser step (the others keep their state)."""
        out = dict(states)
        for name, term in self.stateful_terms().items():
            if term.update is not None:
                updated = term.update(states.get(name, ()), model_params, progress)
                if name not in states and jax.tree.leaves(updated):
                    raise LossError(_stateless_init(name, "update"))
                out[name] = updated
        return out

    def loss(self, params: Mapping[str, Any], states: Mapping[str, Any], inputs: LossInputs) -> MethodLoss:
        """The weighted total at ``inputs.progress`` and each term's unweighted value.

        Args:
          params: the stateful terms' trainable parameters by key (differentiated).
          states: their other state by key.
          inputs: the step's arrays.
        """
        stateful = self.stateful_terms()
        inputs = dataclasses.replace(inputs, term_states=states)
        total = jnp.zeros((), jnp.float32)
        parts: dict[str, jax.Array] = {}
        new_states = dict(states)
        metrics: dict[str, jax.Array] = {}
        keys = jax.random.split(inputs.key, len(self.terms))
        for term, k in zip(self.terms, keys):
            term_inputs = dataclasses.replace(inputs, key=k)
            if term.key in stateful:
                term_state = TermState(params.get(term.key, ()), states.get(term.key, ()))
                value, new_state, extra = stateful[term.key].apply(term_state, term_inputs)
                if term.key in states:
                    new_states[term.key] = new_state
                elif jax.tree.leaves(new_state):
                    raise LossError(_stateless_init(term.key, "apply"))
                metrics.update({f"{term.key}/{m}": v for m, v in extra.items()})
            else:
                value = get_loss(term.loss).fn(term_inputs, **dict(term.hparams))
            value = jnp.asarray(value, jnp.float32)
            parts[term.key] = value
            total = total + term.weight * get_schedule(term.schedule)(inputs.progress) * value
        return MethodLoss(total, parts, new_states, metrics)

    def spec(self) -> str:
        """The one-line spelling of this method (parseable by :func:`parse_method`).

        A negative weight is written with the ``-`` separator (``cross_entropy - 0.1*entropy``).
        """
        out = []
        for i, t in enumerate(self.terms):
            weight = abs(t.weight)
            s = t.loss if weight == 1.0 else f"{float(weight)!r}*{t.loss}"
            if t.hparams:
                s += "(" + ", ".join(f"{k}={v!r}" for k, v in t.hparams) + ")"
            if t.schedule != "constant":
                s += f"@{t.schedule}"
            if t.name is not None:
                s += f" as {t.name}"
            sign = "-" if math.copysign(1.0, t.weight) < 0 else "+"
            out.append(("- " if sign == "-" else "") + s if i == 0 else f" {sign} {s}")
        return "".join(out)


def unchecked_method(name: str, terms: tuple[LossTerm, ...]) -> Method:
    """A :class:`Method` built without :meth:`LossTerm.validate`, for weights and hyper-parameters
    that are traced arrays inside a compiled step (:mod:`da_framework.bench.vmap_samples`); the
    concrete values were validated when each sample's own config was parsed."""
    method = object.__new__(Method)
    object.__setattr__(method, "name", name)
    object.__setattr__(method, "terms", terms)
    return method


_TERM_RE = re.compile(
    r"^\s*(?:(?P<weight>[^*()]*?)\s*\*\s*)?(?P<loss>[A-Za-z_]\w*)"
    r"\s*(?:\((?P<hparams>.*)\))?\s*(?:@\s*(?P<schedule>\w+))?(?:\s+as\s+(?P<key>[A-Za-z_]\w*))?\s*$",
    re.DOTALL,
)
_NUMBER_START_RE = re.compile(r"\s*(\d+\.?\d*|\.\d+)[eE]")  # '1e' of '1e-3': its sign is no separator


def _parse_hparams(text: str | None, loss: str) -> tuple[tuple[str, Any], ...]:
    """Reads ``name=value, ...`` as the keyword arguments of a Python call (values: literals or bare words)."""
    if not text or not text.strip():
        return ()
    form = f"write {loss}(name=value, ...) with Python literals or bare words as values"
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as e:
        raise LossError(f"cannot parse hyper-parameters ({text}) of {loss!r}: {e.msg}; {form}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        raise LossError(f"cannot parse hyper-parameters ({text}) of {loss!r}: unbalanced brackets; {form}")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise LossError(f"hyper-parameters ({text}) of {loss!r} must be written name=value; {form}")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg in out:
            raise LossError(f"hyper-parameter {kw.arg!r} of {loss!r} is given twice in ({text})")
        if isinstance(kw.value, ast.Name):
            value: Any = kw.value.id  # a bare word is a string, e.g. estimator=unbiased
        else:
            try:
                value = ast.literal_eval(kw.value)
            except (ValueError, TypeError):
                raw = ast.get_source_segment(f"f({text})", kw.value)
                raise LossError(
                    f"hyper-parameter {kw.arg!r} of {loss!r} has value {raw!r}, which is not a Python literal; "
                    f"quote strings, e.g. {kw.arg}='...'"
                ) from None
        out[kw.arg] = value  # type: ignore[index]
    return tuple(out.items())


def _split_terms(spec: str) -> list[tuple[str, str]]:
    """Splits into (sign, term) on '+' and '-' outside brackets and quotes and not inside a
    number's exponent (1e-3); a leading sign belongs to the first term (sign '' if none)."""
    parts, depth, quote, sign, current = [], 0, "", "", ""
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in "+-" and depth == 0 and not _NUMBER_START_RE.fullmatch(current):
            if parts or sign or current.strip():  # else: a leading sign, kept for the first term
                parts.append((sign, current))
            sign, current = ch, ""
            continue
        current += ch
    parts.append((sign, current))
    return parts


def parse_method(spec: str, name: str | None = None) -> Method:
    """Parses a method spec or preset name into a :class:`Method` (grammar: module docstring).

    Raises:
      LossError: for an empty or malformed spec, a weight that is not a finite unsigned number,
        an unknown loss/schedule/hyper-parameter; the message says which part is wrong and how
        to write it.
    """
    presets = ", ".join(PRESETS)
    if not isinstance(spec, str) or not spec.strip():
        raise LossError(
            f"method spec {spec!r} is empty; write e.g. 'cross_entropy + 1.0*mmd' or a preset: {presets}"
        )
    label = name or spec.strip()
    text = PRESETS.get(spec.strip(), spec)
    terms = []
    parts = _split_terms(text)
    lone = len(parts) == 1 and spec.strip() not in PRESETS  # one term written out, not a preset name
    for sign, part in parts:
        if not part.strip():
            raise LossError(
                f"method {spec!r} has an empty term or a signed weight (two signs in a row, or a trailing "
                f"sign); weights are unsigned: write a negative weight with '-' in place of '+', e.g. "
                f"'cross_entropy - 0.1*entropy'"
            )
        m = _TERM_RE.match(part)
        if not m:
            raise LossError(
                f"cannot parse method term {part.strip()!r} in {spec!r}; write terms as "
                f"'[weight*]loss[(k=v, ...)][@schedule][ as key]' joined by '+' or '-', or use a preset: {presets}"
            )
        weight = _parse_weight(m["weight"], m["loss"], spec)
        hparams = _parse_hparams(m["hparams"], m["loss"])
        if lone and m["weight"] is None:
            _refuse_preset_name_alone(m["loss"], part.strip())
        terms.append(LossTerm(m["loss"], -weight if sign == "-" else weight, m["schedule"] or "constant", hparams, m["key"]))
    return Method(label, tuple(terms))


def _refuse_preset_name_alone(loss: str, term: str) -> None:
    """A lone unweighted term with arguments, ``dann(hidden_size=1024)``, named after a preset
    that adds a supervised term (``dann`` = ``cross_entropy + 1.0*dann``) is the loss alone,
    which trains no classifier: almost surely not what was meant, so it is refused in one line.
    An explicit weight (``1.0*dann(...)``) says the loss alone is meant."""
    preset = PRESETS.get(loss)
    if preset is None or len(_split_terms(preset)) == 1:
        return
    rest = " + ".join(p.strip() for _, p in _split_terms(preset) if _TERM_RE.match(p.strip())["loss"] != loss)
    raise LossError(
        f"method {term!r} is the loss {loss!r} alone, but the preset {loss!r} is {preset!r}: write it out with "
        f"the arguments, e.g. '{rest} + {term}', or write '1.0*{term}' to train on {loss!r} alone"
    )


def _parse_weight(text: str | None, loss: str, spec: str) -> float:
    """A term's weight: a finite unsigned number (a sign is the term separator, split off before)."""
    if text is None:
        return 1.0
    raw = text.strip()
    try:
        weight = float(raw)
    except ValueError:
        raise LossError(f"weight {raw!r} of loss {loss!r} in {spec!r} is not a number; write e.g. 0.5*{loss}") from None
    if not math.isfinite(weight):
        raise LossError(f"weight {raw!r} of loss {loss!r} in {spec!r} is not finite; write a finite number, e.g. 0.5*{loss}")
    return weight
