"""Weight transfer between the parameter trees of two (possibly different) Flax models.

Parameters are addressed by their ``/``-joined path, e.g. ``backbone/Conv_0/kernel`` or
``backbone/embedding/embedding``.  :func:`transfer_params` walks the *target* tree and, for
every leaf, looks for the source leaf of the same path (after the optional rename map is
applied to the source paths): a leaf of the same shape is copied, any other target leaf is
left as it was.  The returned :class:`TransferReport` says, leaf by leaf, what happened and
why, and prints as a rich table::

    new_params, report = transfer_params(source_params, target_params,
                                         include=r"^backbone/", rename={"backbone/": "backbone/"})
    rich.print(report.table())

Typical uses: a trained LeNet's convolutions into a wider LeNet (the dense layer, whose
shape differs, is reported as a shape mismatch); only the embedding of a text CNN into a
BiLSTM (``include=r"embedding"``); one encoder of a late-fusion model
(``rename={"backbone/": "image_encoder/"}``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from da_framework.errors import UserError

Params = Mapping[str, Any]
Status = Literal["copied", "copied_partial", "missing", "shape_mismatch", "excluded"]
Rename = Mapping[str, str] | Sequence[tuple[str, str]] | None
PathFilter = str | Sequence[str] | None


class TransferError(UserError):
    """Raised for malformed transfer arguments (bad regex, empty trees, strict failures)."""


@dataclasses.dataclass(frozen=True)
class TransferEntry:
    """What happened to one target leaf.

    Attributes:
      target_path: ``/``-joined path of the leaf in the target tree.
      source_path: the source leaf it was matched with (its original, un-renamed path),
        or None when no source leaf maps to ``target_path``.
      status: ``"copied"``, ``"copied_partial"`` (a smaller source leaf copied into the
        leading block of a wider target leaf, see ``widen``), ``"missing"`` (no source
        leaf), ``"shape_mismatch"`` or ``"excluded"`` (filtered out by ``include``/``exclude``).
      target_shape: shape of the target leaf.
      source_shape: shape of the matched source leaf, or None.
    """

    target_path: str
    source_path: str | None
    status: Status
    target_shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """Leaf-by-leaf account of a :func:`transfer_params` call.

    Attributes:
      entries: one :class:`TransferEntry` per target leaf, in path order.
      unused_source: source paths (original names) that no target leaf took.
    """

    entries: tuple[TransferEntry, ...]
    unused_source: tuple[str, ...]

    def paths(self, status: Status) -> list[str]:
        """Target paths with the given status."""
        return [e.target_path for e in self.entries if e.status == status]

    @property
    def copied(self) -> list[str]:
        """Target paths whose values were copied from the source."""
        return self.paths("copied")

    @property
    def copied_partial(self) -> list[str]:
        """Target paths that received a smaller source leaf in their leading block (``widen``)."""
        return self.paths("copied_partial")

    @property
    def missing(self) -> list[str]:
        """Target paths with no source leaf of that (renamed) path."""
        return self.paths("missing")

    @property
    def shape_mismatch(self) -> list[str]:
        """Target paths whose source leaf has another shape."""
        return self.paths("shape_mismatch")

    @property
    def num_copied_values(self) -> int:
        """Number of scalar parameters copied."""
        return int(sum(np.prod(e.target_shape, dtype=np.int64) for e in self.entries if e.status == "copied"))

    def summary(self) -> str:
        """One line: counts per status."""
        counts = {s: len(self.paths(s)) for s in ("copied", "copied_partial", "missing", "shape_mismatch", "excluded")}
        partial = f", partially copied {counts['copied_partial']}" if counts["copied_partial"] else ""
        return (
            f"copied {counts['copied']} leaves ({self.num_copied_values} values){partial}, missing {counts['missing']}, "
            f"shape mismatch {counts['shape_mismatch']}, excluded {counts['excluded']}, "
            f"unused source leaves {len(self.unused_source)}"
        )

    def table(self, title: str = "weight transfer") -> Any:
        """A ``rich.table.Table`` with one row per target leaf."""
        from rich.table import Table

        table = Table(title=title, caption=self.summary())
        for col in ("target path", "status", "target shape", "source path", "source shape"):
            table.add_column(col)
        style = {"copied": "green", "copied_partial": "cyan", "missing": "yellow", "shape_mismatch": "red", "excluded": "dim"}
        for e in self.entries:
            table.add_row(
                e.target_path,
                f"[{style[e.status]}]{e.status}[/]",
                str(e.target_shape),
                e.source_path or "-",
                str(e.source_shape) if e.source_shape is not None else "-",
            )
        return table

    def __str__(self) -> str:
        lines = [self.summary()]
        for e in self.entries:
            src = f" <- {e.source_path} {e.source_shape}" if e.source_path else ""
            lines.append(f"  {e.status:14s} {e.target_path} {e.target_shape}{src}")
        return "\n".join(lines)


def flatten(params: Params) -> dict[str, Any]:
    """Flattens a (Frozen)dict param tree to ``{"a/b/kernel": leaf}``."""
    if not isinstance(params, Mapping):
        raise TransferError(f"expected a dict of parameters, got {type(params).__name__}")
    return {"/".join(map(str, k)): v for k, v in flax.traverse_util.flatten_dict(dict(params)).items()}


def path_string(path: tuple[Any, ...]) -> str:
    """``/``-joined names of a JAX key path (dict keys, attribute names, sequence indices)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def map_paths(fn: Any, tree: Any) -> Any:
    """``fn(path, leaf)`` over every leaf, ``path`` ``/``-joined; keeps the exact structure (empty dicts too)."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: fn(path_string(path), leaf), tree)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _compile_patterns(patterns: PathFilter, what: str) -> list[re.Pattern[str]] | None:
    if patterns is None:
        return None
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    try:
        return [re.compile(p) for p in items]
    except re.error as e:
        raise TransferError(f"bad regular expression in {what}: {e}; pass Python regexes, e.g. r'^backbone/'") from None


def matches(path: str, patterns: PathFilter) -> bool:
    """True when ``re.search`` of any of ``patterns`` finds ``path`` (None matches everything)."""
    compiled = _compile_patterns(patterns, "patterns")
    return compiled is None or any(p.search(path) for p in compiled)


def rename_path(path: str, rename: Rename) -> str:
    """Maps a source path to its target name.

    Args:
      path: ``/``-joined source path.
      rename: a dict of path prefixes ``{"backbone/": "image_encoder/"}`` (the longest
        matching prefix wins), or a sequence of ``(regex, replacement)`` pairs applied in
        order with ``re.sub``; None keeps the path.
    """
    if rename is None:
        return path
    if isinstance(rename, Mapping):
        best = max((p for p in rename if path.startswith(p)), key=len, default=None)
        return path if best is None else rename[best] + path[len(best) :]
    for pattern, repl in rename:
        try:
            path = re.sub(pattern, repl, path)
        except re.error as e:
            raise TransferError(f"bad rename regex {pattern!r}: {e}") from None
    return path


def transfer_params(
    source: Params,
    target: Params,
    *,
    rename: Rename = None,
    include: PathFilter = None,
    exclude: PathFilter = None,
    strict: bool = False,
    widen: bool = False,
) -> tuple[dict[str, Any], TransferReport]:
    """Copies every source leaf whose (renamed) path and shape match a target leaf.

    Args:
      source: parameter tree of the trained source model (e.g. ``variables["params"]``).
      target: parameter tree of the target model (freshly initialised); not modified.
      rename: source-to-target path map (see :func:`rename_path`).
      include: regex(es) on *target* paths; only matching leaves are considered (partial
        transfer, e.g. ``r"^backbone/embedding/"``).  None: all leaves.
      exclude: regex(es) on target paths to leave untouched (applied after ``include``).
      strict: raise when a considered target leaf is missing or has another shape.
      widen: copy a source leaf of the same rank but smaller or equal size along every axis
        into the leading block of the target leaf (``target[:a, :b] = source``), keeping the
        target's initialisation elsewhere: e.g. a dense layer of 256 units into the first
        256 of 512 units of a wider model.  The extra units start random, so unlike
        Net2Net (Chen, Goodfellow & Shlens, ICLR 2016) the function is not preserved.

    Returns:
      ``(new_params, report)``: a new target tree (copied leaves take the target leaf's
      dtype; every other leaf is the target's own array) and a :class:`TransferReport`.

    Raises:
      TransferError: if two source leaves rename to the same target path, a regex is bad,
        or ``strict`` and something was not copied.
    """
    flat_s, flat_t = flatten(source), flatten(target)
    inc, exc = _compile_patterns(include, "include"), _compile_patterns(exclude, "exclude")
    renamed: dict[str, str] = {}
    for path in flat_s:
        new = rename_path(path, rename)
        if new in renamed:
            raise TransferError(
                f"source leaves {renamed[new]!r} and {path!r} both rename to {new!r}; make the rename map one-to-one"
            )
        renamed[new] = path
    out, entries, used = {}, [], set()
    for path in sorted(flat_t):
        leaf = flat_t[path]
        shape = tuple(np.shape(leaf))
        considered = (inc is None or any(p.search(path) for p in inc)) and not (exc and any(p.search(path) for p in exc))
        src_path = renamed.get(path)
        src_shape = tuple(np.shape(flat_s[src_path])) if src_path is not None else None
        if not considered:
            status: Status = "excluded"
        elif src_path is None:
            status = "missing"
        elif src_shape == shape:
            status = "copied"
        elif widen and len(src_shape) == len(shape) and all(a <= b for a, b in zip(src_shape, shape)):
            status = "copied_partial"
        else:
            status = "shape_mismatch"
        if status == "copied":
            out[path] = jnp.asarray(flat_s[src_path], dtype=jnp.asarray(leaf).dtype)
            used.add(src_path)
        elif status == "copied_partial":
            block = tuple(slice(0, n) for n in src_shape)
            out[path] = jnp.asarray(leaf).at[block].set(jnp.asarray(flat_s[src_path], dtype=jnp.asarray(leaf).dtype))
            used.add(src_path)
        else:
            out[path] = leaf
        entries.append(TransferEntry(path, src_path, status, shape, src_shape))
    report = TransferReport(tuple(entries), tuple(sorted(set(flat_s) - used)))
    if strict and (report.missing or report.shape_mismatch):
        raise TransferError(
            f"strict transfer failed: missing {report.missing}, shape mismatch {report.shape_mismatch}; "
            "fix the rename map or narrow `include`"
        )
    return unflatten(out), report
