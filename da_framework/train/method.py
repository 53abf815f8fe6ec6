"""Methods: weighted sums of registered loss terms.

A method is data, not a trainer subclass::

    Method((LossTerm("cross_entropy"), LossTerm("dann", weight=1.0)))

and has a one-line spelling used by configs and the CLI (``parse_method``)::

    "cross_entropy + 0.5*mmd"                      # weights
    "cross_entropy + 1.0*dann@linear"               # a weight schedule after '@'
    "cross_entropy + 0.1*mmd(estimator=unbiased)"   # loss hyper-parameters in brackets
    "dann"                                          # a named preset (see PRESETS)

The total loss at progress p is  sum_i w_i * schedule_i(p) * loss_i(inputs, **hparams_i).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from da_framework.losses.registry import LossError, LossInputs, get_loss
from da_framework.train.schedules import get_schedule


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted loss term of a method.

    Attributes:
      loss: registered loss name.
      weight: constant weight.
      schedule: name of a weight schedule (``da_framework.train.schedules``).
      hparams: keyword hyper-parameters passed to the loss.
    """

    loss: str
    weight: float = 1.0
    schedule: str = "constant"
    hparams: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """The name this term's metric and auxiliary parameters go by."""
        return self.loss

    def validate(self) -> None:
        """Checks that the loss, schedule and hyper-parameters exist."""
        spec = get_loss(self.loss)
        get_schedule(self.schedule)
        for name, _ in self.hparams:
            if name not in spec.hparams:
                valid = ", ".join(spec.hparams) or "none"
                raise LossError(f"loss {self.loss!r} has no hyper-parameter {name!r}; valid: {valid}")


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
}
PRESETS["mmd"] = PRESETS["dan"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A named, weighted sum of loss terms."""

    name: str
    terms: tuple[LossTerm, ...]

    def __post_init__(self) -> None:
        keys = [t.key for t in self.terms]
        if len(set(keys)) != len(keys):
            raise LossError(f"method {self.name!r} uses a loss twice: {keys}")
        for term in self.terms:
            term.validate()

    def aux_modules(self) -> dict[str, nn.Module]:
        """The auxiliary networks the terms need, by term key."""
        out = {}
        for term in self.terms:
            factory = get_loss(term.loss).aux_module
            if factory is not None:
                out[term.key] = factory()
        return out

    def init_aux(self, key: jax.Array, inputs: LossInputs) -> dict[str, Any]:
        """Initialises the auxiliary networks' parameters on example step inputs."""
        params: dict[str, Any] = {}
        for (name, module), k in zip(self.aux_modules().items(), jax.random.split(key, 16)):
            captured: dict[str, Any] = {}

            def aux(x: jax.Array, module: nn.Module = module, k: jax.Array = k) -> jax.Array:
                captured["params"] = module.init(k, x)["params"]
                return module.apply({"params": captured["params"]}, x)

            term = next(t for t in self.terms if t.key == name)
            get_loss(term.loss).fn(dataclasses.replace(inputs, aux=aux), **dict(term.hparams))
            params[name] = captured["params"]
        return params

    def init_extras(self, model_params: Any) -> dict[str, Any]:
        """The extra train-state pytrees the terms ask for (merged; keys must not clash)."""
        extras: dict[str, Any] = {}
        for term in self.terms:
            hook = get_loss(term.loss).init_extras
            if hook is not None:
                extras.update(hook(model_params))
        return extras

    def update_extras(self, extras: dict[str, Any], model_params: Any, progress: jax.Array) -> dict[str, Any]:
        """Runs the terms' ``update_extras`` hooks after an optimiser step."""
        for term in self.terms:
            hook = get_loss(term.loss).update_extras
            if hook is not None:
                extras = {**extras, **hook(extras, model_params, progress)}
        return extras

    def loss(
        self, aux_params: Mapping[str, Any], inputs: LossInputs
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns (total loss, {term key: unweighted term value})."""
        modules = self.aux_modules()
        total = jnp.zeros((), jnp.float32)
        parts: dict[str, jax.Array] = {}
        keys = jax.random.split(inputs.key, len(self.terms))
        for term, k in zip(self.terms, keys):
            aux = None
            if term.key in modules:
                module, p = modules[term.key], aux_params[term.key]
                aux = lambda x, module=module, p=p: module.apply({"params": p}, x)  # noqa: E731
            value = get_loss(term.loss).fn(dataclasses.replace(inputs, key=k, aux=aux), **dict(term.hparams))
            value = jnp.asarray(value, jnp.float32)
            parts[term.key] = value
            total = total + term.weight * get_schedule(term.schedule)(inputs.progress) * value
        return total, parts

    def spec(self) -> str:
        """The one-line spelling of this method (parseable by :func:`parse_method`)."""
        out = []
        for t in self.terms:
            s = t.loss if t.weight == 1.0 else f"{t.weight!r}*{t.loss}"
            if t.hparams:
                s += "(" + ", ".join(f"{k}={v!r}" for k, v in t.hparams) + ")"
            if t.schedule != "constant":
                s += f"@{t.schedule}"
            out.append(s)
        return " + ".join(out)


_TERM_RE = re.compile(
    r"^\s*(?:(?P<weight>[0-9.eE+-]+)\s*\*\s*)?(?P<loss>[A-Za-z_]\w*)"
    r"\s*(?:\((?P<hparams>[^)]*)\))?\s*(?:@\s*(?P<schedule>\w+))?\s*$"
)


def _parse_hparams(text: str | None, loss: str) -> tuple[tuple[str, Any], ...]:
    if not text or not text.strip():
        return ()
    out = []
    for item in text.split(","):
        if "=" not in item:
            raise LossError(f"hyper-parameter {item.strip()!r} of {loss!r} must be written name=value")
        name, raw = (s.strip() for s in item.split("=", 1))
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word is a string, e.g. estimator=unbiased
        out.append((name, value))
    return tuple(out)


def _split_terms(spec: str) -> list[str]:
    """Splits on '+' outside brackets and not inside a number's exponent (1e+3)."""
    parts, depth, current = [], 0, ""
    for ch in spec:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "+" and depth == 0 and not re.search(r"\d[eE]$", current):
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def parse_method(spec: str, name: str | None = None) -> Method:
    """Parses a method spec or preset name into a :class:`Method`.

    Raises:
      LossError: for a malformed spec, an unknown loss/schedule/hyper-parameter; the message
        says which part is wrong and lists the valid names.
    """
    label = name or spec.strip()
    text = PRESETS.get(spec.strip(), spec)
    terms = []
    for part in _split_terms(text):
        m = _TERM_RE.match(part)
        if not m:
            presets = ", ".join(PRESETS)
            raise LossError(
                f"cannot parse method term {part.strip()!r} in {spec!r}; write terms as "
                f"'[weight*]loss[(k=v, ...)][@schedule]' joined by '+', or use a preset: {presets}"
            )
        weight = float(m["weight"]) if m["weight"] else 1.0
        terms.append(
            LossTerm(m["loss"], weight, m["schedule"] or "constant", _parse_hparams(m["hparams"], m["loss"]))
        )
    return Method(label, tuple(terms))
