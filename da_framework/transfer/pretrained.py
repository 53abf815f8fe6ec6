"""Pretrained weights from torch checkpoints on disk: torchvision / timm ResNets and timm ViTs.

Reads a ``state_dict`` saved by ``torch.save`` (``.pth``/``.pt``/``.bin``; needs torch) or a
``.safetensors`` file (read with ``safetensors.numpy``; no torch), maps every tensor into the
Flax parameter tree *and* the BatchNorm ``batch_stats`` of the project's ``resnet18`` /
``resnet50`` / ``vit_b16`` (or any :class:`~da_framework.models.vit.ViT`, e.g. ``vit_tiny``),
and returns a :class:`~da_framework.transfer.weights.TransferReport` of what was loaded::

    variables, report = load_pretrained("resnet50.pth", variables, "resnet50")
    rich.print(report.table("pretrained"))

The mapping (``<i>`` a block index, ``L.b`` torchvision's stage and block):

* conv ``weight`` (O, I, H, W) -> ``kernel`` (H, W, I, O); linear ``weight`` (out, in) ->
  ``kernel`` (in, out); BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` ->
  params ``scale``/``bias``, batch_stats ``mean``/``var`` (``num_batches_tracked`` unused);
* ResNet: ``conv1``/``bn1`` -> ``Conv_0``/``BatchNorm_0``; ``layerL.b.convK``/``bnK`` ->
  ``<Block>_<i>/Conv_{K-1}``/``BatchNorm_{K-1}``; ``downsample.0``/``.1`` -> ``proj``/``proj_norm``;
  ``fc`` -> the classifier ``head``;
* ViT: ``patch_embed.proj`` -> ``embedding``; ``cls_token`` -> ``cls``; ``pos_embed`` ->
  ``pos_embedding``; ``blocks.N.norm1``/``norm2`` -> ``blockN/norm1``/``norm2``;
  ``blocks.N.attn.qkv`` rows ``[0:D]``, ``[D:2D]``, ``[2D:3D]`` -> ``attention/query``,
  ``key``, ``value`` with kernels (D, heads, D/heads); ``attn.proj`` -> ``attention/out``
  (heads, D/heads, D); ``mlp.fc1``/``fc2`` -> ``mlp_in``/``mlp_out``; ``norm`` -> ``norm``;
  ``head`` -> the classifier ``head``.

The class head is dropped by default (it stays as initialised; ``keep_head=True`` copies it,
which needs ``bottleneck_dim=None`` and the checkpoint's number of classes).  A missing file,
an unreadable one or a checkpoint of another architecture or size is a one-line
:class:`PretrainedError` naming the file and the first mismatching tensor (torch name, Flax
path, both shapes).  In training, ``model_kwargs={"pretrained": "<file>"}`` (and
``"pretrained_head": True``) loads the file right after initialisation (:func:`load_for_training`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from da_framework.errors import UserError
from da_framework.transfer.weights import TransferEntry, TransferReport, flatten, map_paths

# arch -> (family, block class name, blocks per stage); a ViT's sizes come from the target tree.
ARCHS: dict[str, tuple[str, str | None, tuple[int, ...]]] = {
    "resnet18": ("resnet", "BasicBlock", (2, 2, 2, 2)),
    "resnet50": ("resnet", "BottleneckBlock", (3, 4, 6, 3)),
    "vit_b16": ("vit", None, ()),
    "vit_tiny": ("vit", None, ()),
}
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
Convert = Callable[[np.ndarray], np.ndarray]


class PretrainedError(UserError):
    """A pretrained-weights file is missing, unreadable or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The float tensors of a torch ``state_dict`` file as float32 NumPy arrays, in file order.

    ``.safetensors`` is read with ``safetensors.numpy``; anything else with
    ``torch.load(weights_only=True)``.  A checkpoint dict holding the weights under
    ``"state_dict"`` or ``"model"`` is unwrapped, and a ``"module."`` prefix on every key
    (``DataParallel``) is removed.  Integer tensors (``num_batches_tracked``) are dropped.

    Raises:
      PretrainedError: the file is missing, cannot be read, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights file {path} does not exist; pass the path of a torchvision/timm "
                              ".pth or .safetensors state_dict")
    if path.suffix == ".safetensors":
        try:
            import ml_dtypes  # noqa: F401 (a JAX dependency: registers bfloat16 with NumPy)
            import safetensors.numpy
        except ImportError:
            raise PretrainedError(f"reading {path} needs the safetensors package: pip install safetensors") from None
        try:
            raw: Mapping[str, Any] = safetensors.numpy.load_file(str(path))
        except Exception as e:  # noqa: BLE001 (any reader failure is a bad file)
            raise PretrainedError(f"cannot read {path} as safetensors: {' '.join(str(e).split())}") from None
    else:
        try:
            import torch
        except ImportError:
            raise PretrainedError(f"reading {path} (a torch .pth file) needs torch: install torch "
                                  "(CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu) "
                                  "or convert the file to .safetensors") from None
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise PretrainedError(f"cannot read {path} with torch.load: {' '.join(str(e).split())[:300]}") from None
        for wrapper in ("state_dict", "model"):
            if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
    if not isinstance(raw, Mapping):
        raise PretrainedError(f"{path} holds a {type(raw).__name__}, not a state_dict; save model.state_dict()")
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        if hasattr(value, "detach"):  # a torch tensor
            if not value.is_floating_point():
                continue
            value = value.detach().float().numpy()
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):  # float16/32/64, bfloat16
            out[str(key)] = value.astype(np.float32)
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    if not out:
        raise PretrainedError(f"{path} holds no float tensors; save model.state_dict() of a torchvision/timm model")
    return out


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _dense(w: np.ndarray) -> np.ndarray:
    return w.T


def _rule(kind: str, leaf: str, shape: tuple[int, ...]) -> tuple[str, Convert, tuple[int, ...]] | None:
    """(torch leaf name, converter, expected torch shape) of a Flax leaf of a conv/bn/dense/ln layer."""
    if kind == "conv" and leaf == "kernel" and len(shape) == 4:
        return "weight", _conv, (shape[3], shape[2], shape[0], shape[1])
    if kind == "bn" and leaf in _BN:
        return _BN[leaf], _same, shape
    if kind == "dense" and leaf == "kernel" and len(shape) == 2:
        return "weight", _dense, (shape[1], shape[0])
    if kind in ("conv", "dense", "ln") and leaf in ("bias", "scale"):
        return ("weight" if leaf == "scale" else "bias"), _same, shape
    return None


Source = tuple[str, Convert, tuple[int, ...]]  # torch name, converter, expected torch shape


def _resnet_source(rel: str, shape: tuple[int, ...], block: str, stages: tuple[int, ...]) -> Source | None:
    """torch name, converter and torch shape of the ResNet leaf at backbone-relative path ``rel``."""
    *mods, leaf = rel.split("/")
    if len(mods) == 1 and mods[0] in ("Conv_0", "BatchNorm_0"):
        module, kind = ("conv1", "conv") if mods[0] == "Conv_0" else ("bn1", "bn")
    elif len(mods) == 2 and (m := re.fullmatch(rf"{block}_(\d+)", mods[0])):
        i, stage = int(m.group(1)), 0
        while stage < len(stages) and i >= stages[stage]:
            i, stage = i - stages[stage], stage + 1
        sub = re.fullmatch(r"(Conv|BatchNorm)_(\d+)|proj|proj_norm", mods[1])
        if stage == len(stages) or sub is None:
            return None
        if sub.group(1):
            kind = "conv" if sub.group(1) == "Conv" else "bn"
            name = f"{kind}{int(sub.group(2)) + 1}"
        else:
            name, kind = ("downsample.0", "conv") if mods[1] == "proj" else ("downsample.1", "bn")
        module = f"layer{stage + 1}.{i}.{name}"
    else:
        return None
    rule = _rule(kind, leaf, shape)
    return None if rule is None else (f"{module}.{rule[0]}", rule[1], rule[2])


def _vit_source(rel: str, shape: tuple[int, ...]) -> Source | None:
    """torch name, converter and torch shape of the ViT leaf at backbone-relative path ``rel``
    (q/k/v leaves name a row slice of ``attn.qkv``: ``blocks.0.attn.qkv.weight[0:768]``)."""
    if rel in ("cls", "pos_embedding"):
        return {"cls": "cls_token", "pos_embedding": "pos_embed"}[rel], _same, shape
    *mods, leaf = rel.split("/")
    if mods == ["embedding"]:
        rule = _rule("conv", leaf, shape)
        return None if rule is None else (f"patch_embed.proj.{rule[0]}", rule[1], rule[2])
    if mods == ["norm"]:
        rule = _rule("ln", leaf, shape)
        return None if rule is None else (f"norm.{rule[0]}", rule[1], rule[2])
    m = re.fullmatch(r"block(\d+)", mods[0]) if mods else None
    if m is None or len(mods) not in (2, 3):
        return None
    base = f"blocks.{m.group(1)}"
    if len(mods) == 2:
        kind, name = {"norm1": ("ln", "norm1"), "norm2": ("ln", "norm2"), "mlp_in": ("dense", "mlp.fc1"),
                      "mlp_out": ("dense", "mlp.fc2")}.get(mods[1], (None, None))
        rule = _rule(kind, leaf, shape) if kind else None
        return None if rule is None else (f"{base}.{name}.{rule[0]}", rule[1], rule[2])
    if mods[1] != "attention":
        return None
    if mods[2] in ("query", "key", "value") and (leaf, len(shape)) in (("kernel", 3), ("bias", 2)):
        width = shape[-2] * shape[-1]
        lo = ("query", "key", "value").index(mods[2]) * width
        rows = slice(lo, lo + width)
        if leaf == "kernel":  # (3W, D) rows -> (D, heads, head_dim)
            name = f"{base}.attn.qkv.weight[{lo}:{lo + width}]"
            return name, lambda w: w[rows].T.reshape(shape), (3 * width, shape[0])
        return f"{base}.attn.qkv.bias[{lo}:{lo + width}]", lambda b: b[rows].reshape(shape), (3 * width,)
    if mods[2] == "out" and leaf == "kernel" and len(shape) == 3:  # (D, W) -> (heads, head_dim, D)
        return f"{base}.attn.proj.weight", lambda w: w.T.reshape(shape), (shape[2], shape[0] * shape[1])
    if mods[2] == "out" and leaf == "bias":
        return f"{base}.attn.proj.bias", _same, shape
    return None


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    variables: Mapping[str, Any],
    arch: str,
    *,
    keep_head: bool = False,
    prefix: str = "backbone",
    source: str = "state_dict",
) -> tuple[dict[str, np.ndarray], TransferReport]:
    """Maps a torch ``state_dict`` onto the Flax ``variables`` of ``arch``.

    Args:
      state: torch names -> arrays (:func:`read_state_dict`).
      variables: the model's variables (``{"params": ..., "batch_stats": ...}``), arrays or
        ``jax.ShapeDtypeStruct`` (only shapes are read).
      arch: a name of :data:`ARCHS` (``resnet18``, ``resnet50``, ``vit_b16``, ``vit_tiny``).
      keep_head: also copy the checkpoint's class head (``fc`` / ``head``) into ``params/head``.
      prefix: where the backbone sits in ``variables["params"]``: ``"backbone"`` for a
        :class:`~da_framework.models.classifier.Classifier`, ``""`` for a bare backbone.
      source: the file name, for error messages.

    Returns:
      ``(values, report)``: ``{"params/backbone/Conv_0/kernel": array, ...}`` for every copied
      leaf (float32), and a report with one entry per leaf of ``variables`` (``copied`` with
      the torch name as source path, or ``excluded``) and the unused torch names.

    Raises:
      PretrainedError: an unknown ``arch``; a Flax leaf with no torch counterpart; a torch
        tensor missing, of another shape, or with no place in ``arch``.
    """
    if arch not in ARCHS:
        raise PretrainedError(f"no importer for model {arch!r}; pretrained torch weights load into: {', '.join(ARCHS)}")
    family, block, stages = ARCHS[arch]
    if keep_head and not prefix:
        raise PretrainedError("keep_head needs a Classifier's variables (prefix='backbone'); "
                              "a bare backbone has no head")
    flat = {path: tuple(np.shape(leaf)) for path, leaf in flatten(variables).items()}
    if keep_head and "params/head/scale" in flat:  # a checkpoint's linear layer is not a (direction, length) pair
        raise PretrainedError(f"{source}: keep_head copies a linear class head, but this model's head is weight-"
                              "normalised (model_kwargs head_weight_norm=True); drop one of the two")
    scope = f"/{prefix}/" if prefix else "/"
    head_name = "fc" if family == "resnet" else "head"
    plan: dict[str, Source] = {}
    for path, shape in flat.items():
        collection, _, rest = path.partition("/")
        if collection in ("params", "batch_stats") and path.startswith(collection + scope):
            rel = path[len(collection + scope):]
            found = _resnet_source(rel, shape, block, stages) if family == "resnet" else _vit_source(rel, shape)
            if found is None or (collection == "batch_stats") != found[0].split(".")[-1].startswith("running_"):
                raise PretrainedError(f"{source}: the model's {path} {shape} has no counterpart in a torchvision/timm "
                                      f"{arch}; build the model as make_model({arch!r}, ...) with its default kwargs")
            plan[path] = found
        elif keep_head and path in ("params/head/kernel", "params/head/bias"):
            leaf = path.rsplit("/", 1)[1]
            rule = _rule("dense", leaf, shape)
            plan[path] = (f"{head_name}.{rule[0]}", rule[1], rule[2])
    if not plan:
        raise PretrainedError(f"{source}: the model has no leaves under params/{prefix}; pass the variables of {arch}")
    order = {name: i for i, name in enumerate(state)}
    base = {path: name.split("[")[0] for path, (name, _, _) in plan.items()}
    for path in sorted(plan, key=lambda p: order.get(base[p], len(order))):
        name, _, expected = plan[path]
        if base[path] not in state:
            hint = " (keep_head=False drops the head)" if base[path].startswith(head_name + ".") else ""
            raise PretrainedError(f"{source}: has no {base[path]} {expected} for {path} {flat[path]}{hint}; it is not "
                                  f"a torchvision/timm {arch} state_dict (its first key is {next(iter(state))!r})")
        got = tuple(state[base[path]].shape)
        if got != expected:
            head = path.startswith("params/head/")
            hint = " (to keep the head, use bottleneck_dim=None and the checkpoint's classes)" if head else ""
            raise PretrainedError(f"{source}: {base[path]} has shape {got} but {path} {flat[path]} needs torch shape "
                                  f"{expected}; the file is not a {arch} of this size{hint}")
    used = set(base.values())
    strays = [k for k in state if k not in used and not k.startswith(head_name + ".")]
    if strays:
        raise PretrainedError(f"{source}: {strays[0]} {tuple(state[strays[0]].shape)} has no place in {arch} "
                              f"({len(strays)} such tensors); it is not a torchvision/timm {arch} state_dict")
    values = {path: np.ascontiguousarray(conv(state[base[path]]), np.float32) for path, (_, conv, _) in plan.items()}
    entries = tuple(
        TransferEntry(path, plan[path][0], "copied", flat[path], tuple(state[base[path]].shape)) if path in plan
        else TransferEntry(path, None, "excluded", flat[path], None)
        for path in sorted(flat)
    )
    return values, TransferReport(entries, tuple(k for k in state if k not in used))


def merge_variables(variables: Mapping[str, Any], values: Mapping[str, Any]) -> Any:
    """``variables`` with the leaves named in ``values`` replaced (cast to the leaf's dtype);
    the structure is kept, so it works on traced values inside ``jax.jit``.

    Raises:
      PretrainedError: a path of ``values`` is not a leaf of ``variables``.
    """
    flat = flatten(variables)
    unknown = sorted(set(values) - set(flat))
    if unknown:
        raise PretrainedError(f"{unknown[0]} is not a leaf of the model's variables ({len(unknown)} such); "
                              "convert the checkpoint for this model")
    return map_paths(lambda path, leaf: jnp.asarray(values[path], jnp.result_type(leaf)) if path in values else leaf,
                     variables)


def load_pretrained(
    path: str | Path, variables: Mapping[str, Any], arch: str, *, keep_head: bool = False, prefix: str = "backbone"
) -> tuple[Any, TransferReport]:
    """Reads ``path`` (:func:`read_state_dict`) and loads it into ``variables`` of ``arch``
    (:func:`convert_state_dict`); returns the new variables and the report."""
    values, report = convert_state_dict(read_state_dict(path), variables, arch, keep_head=keep_head, prefix=prefix,
                                        source=str(path))
    return merge_variables(variables, values), report


def load_options(model_kwargs: Mapping[str, Any]) -> tuple[str, bool] | None:
    """``(file, keep_head)`` from a config's ``model_kwargs`` (``pretrained``, ``pretrained_head``), or None.

    Raises:
      PretrainedError: ``pretrained`` is not a path string or ``pretrained_head`` not a bool.
    """
    path, head = model_kwargs.get("pretrained"), model_kwargs.get("pretrained_head", False)
    if path is None:
        if "pretrained_head" in model_kwargs:
            raise PretrainedError("model_kwargs 'pretrained_head' needs 'pretrained', the weights file to load")
        return None
    if not isinstance(path, (str, Path)) or not str(path):
        raise PretrainedError(f"model_kwargs 'pretrained' must be the path of a .pth or .safetensors file, "
                              f"got {path!r}")
    if not isinstance(head, bool):
        raise PretrainedError(f"model_kwargs 'pretrained_head' must be True or False, got {head!r}")
    return str(path), head


def load_for_training(
    model: Any, arch: str, model_kwargs: Mapping[str, Any], key: jax.Array, inputs: jax.Array
) -> tuple[dict[str, np.ndarray], TransferReport] | None:
    """What training loads after initialisation: the converted leaves of the file named by
    ``model_kwargs["pretrained"]`` for ``model`` (a Classifier of ``arch``) and the report,
    or None when no file is named.  Only shapes of ``model.init(key, inputs)`` are computed;
    merge the values into the initialised variables with :func:`merge_variables`."""
    options = load_options(model_kwargs)
    if options is None:
        return None
    path, keep_head = options
    shapes = jax.eval_shape(lambda k, x: model.init(k, x, train=False), key, inputs)
    return convert_state_dict(read_state_dict(path), shapes, arch, keep_head=keep_head, source=path)
