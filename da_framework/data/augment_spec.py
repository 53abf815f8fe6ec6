"""Augmentation chains written as strings: ``"random_crop(pad=4, mode='constant') | random_rotation(max_degrees=10)"``.

The config key ``source_augment`` names the augmentation a run applies to every source batch
inside its compiled step, the way a PyTorch user writes ``transforms.Compose([...])`` for
the source loader (SHOT's USPS source: ``RandomCrop(28, padding=4)``, ``RandomRotation(10)``).
A spec is ops joined by ``|``, applied left to right; each op is one of :data:`AUGMENT_OPS`
(the keyed image functions of :mod:`da_framework.data.augment`) called with literal
arguments (numbers, strings, booleans, tuples), parsed with :mod:`ast` as big_vision's
``pp/registry.py`` parses its preprocessing strings -- nothing is evaluated.  The op after
the first gets ``fold_in(key, i)``, so each op draws its own randomness from the one key.

An unknown op, a bad argument or a non-literal value is a one-line :class:`AugmentSpecError`
naming the op and what it takes, raised when the run is built, before anything compiles.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import jax

from da_framework.data import augment
from da_framework.errors import UserError

# name -> fn(key, images, **kwargs) -> images; every keyed image op of da_framework.data.augment.
AUGMENT_OPS: dict[str, Callable[..., jax.Array]] = {
    fn.__name__: fn
    for fn in (augment.random_flip, augment.random_crop, augment.random_rotation, augment.gaussian_noise,
               augment.random_blur, augment.color_jitter, augment.jpeg_quality, augment.cutout,
               augment.missing_values, augment.duplicated_values, augment.outlier_values,
               augment.weak_augment, augment.strong_augment)
}

Augment = Callable[[jax.Array, jax.Array], jax.Array]


class AugmentSpecError(UserError):
    """An augmentation spec that does not parse, or names an unknown op or argument."""


def _parameters(name: str) -> str:
    params = list(inspect.signature(AUGMENT_OPS[name]).parameters.values())[2:]
    return ", ".join(f"{p.name}={p.default!r}" for p in params)


def _literal(node: ast.AST, op: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise AugmentSpecError(
            f"augment op {op}: argument {ast.unparse(node)!r} is not a literal (number, string, bool, tuple)"
        ) from None


def parse_augment(spec: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Parses ``spec`` into ``[(op name, args, kwargs), ...]``, every call checked against its op.

    Args:
      spec: ops joined by ``|``, e.g. ``"random_crop(pad=4) | random_flip"``; a bare name
        calls the op with its defaults.  Empty or blank: no op.

    Raises:
      AugmentSpecError: a piece that is not a call, an unknown op (the message lists them),
        a non-literal argument, or arguments the op does not take (the message lists its
        parameters and their defaults).
    """
    ops = []
    for piece in (p.strip() for p in spec.split("|")):
        if not piece:
            if spec.strip():
                raise AugmentSpecError(f"augment spec {spec!r} has an empty op between '|'s")
            continue
        try:
            node = ast.parse(piece, mode="eval").body
        except SyntaxError:
            raise AugmentSpecError(f"augment op {piece!r} is not a call like random_crop(pad=4)") from None
        call = node if isinstance(node, ast.Call) else ast.Call(func=node, args=[], keywords=[])
        if not isinstance(call.func, ast.Name):
            raise AugmentSpecError(f"augment op {piece!r} is not a call like random_crop(pad=4)")
        name = call.func.id
        if name not in AUGMENT_OPS:
            raise AugmentSpecError(f"unknown augment op {name!r}; valid: {', '.join(sorted(AUGMENT_OPS))}")
        if any(k.arg is None for k in call.keywords):
            raise AugmentSpecError(f"augment op {name}: **kwargs is not allowed; write each argument")
        args = tuple(_literal(a, name) for a in call.args)
        kwargs = {k.arg: _literal(k.value, name) for k in call.keywords}
        try:
            inspect.signature(AUGMENT_OPS[name]).bind(None, None, *args, **kwargs)
        except TypeError as e:
            raise AugmentSpecError(f"augment op {name}: {e}; it takes {_parameters(name)}") from None
        ops.append((name, args, kwargs))
    return ops


def make_augment(spec: str) -> Augment | None:
    """The keyed function ``(key, images) -> images`` a spec describes, or None for an empty spec.

    Op ``i`` (from 0) runs with ``key`` for ``i = 0`` and ``fold_in(key, i)`` after, on the
    previous op's output; shapes and dtypes are kept (each op's contract).
    """
    ops = parse_augment(spec)
    if not ops:
        return None

    def apply(key: jax.Array, images: jax.Array) -> jax.Array:
        for i, (name, args, kwargs) in enumerate(ops):
            images = AUGMENT_OPS[name](key if i == 0 else jax.random.fold_in(key, i), images, *args, **kwargs)
        return images

    return apply
