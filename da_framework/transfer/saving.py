"""Saving and restoring a trained source model (its variables and a JSON description) with orbax.

A transfer experiment trains a source model once, saves it, and later restores it into
whatever target model wants its weights::

    save_model("runs/lenet_source", variables, {"model": "lenet", "model_kwargs": {...}})
    variables, meta = restore_model("runs/lenet_source")
    new_params, report = transfer_params(variables["params"], target_params, include=r"^backbone/")

Unlike :mod:`da_framework.train.checkpoint` (periodic checkpoints of a whole train state,
tied to one run's config), this stores one finished model under one folder, with free-form
metadata (model name, kwargs, metrics) next to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from da_framework.errors import UserError


class SavedModelError(UserError):
    """Raised when a saved model is missing or the folder is not empty."""


def save_model(
    directory: str | os.PathLike[str], variables: Any, meta: dict[str, Any] | None = None, *, overwrite: bool = False
) -> Path:
    """Saves a model's variables (any pytree of arrays) and JSON metadata into ``directory``.

    Args:
      directory: folder to create (must not exist unless ``overwrite``).
      variables: e.g. ``{"params": ..., "batch_stats": ...}``.
      meta: JSON-serialisable description (model name, kwargs, metrics).
      overwrite: replace an existing saved model.

    Returns:
      the absolute path of the saved model.
    """
    path = Path(directory).resolve()
    if path.exists() and not overwrite:
        raise SavedModelError(f"{path} already exists; pass overwrite=True or pick a new folder")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())  # synchronous
    checkpointer.save(
        path,
        args=ocp.args.Composite(variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta or {})),
        force=overwrite,
    )
    return path


def restore_model(directory: str | os.PathLike[str], template: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores ``(variables, meta)`` saved by :func:`save_model`.

    Args:
      directory: the saved model's folder.
      template: optional pytree with the saved structure, shapes and dtypes (restores onto
        it, e.g. with its shardings); None restores the tree as saved.

    Raises:
      SavedModelError: if nothing is saved there.
    """
    path = Path(directory).resolve()
    if not (path / "variables").is_dir():
        raise SavedModelError(f"no saved model in {path}; save one with da_framework.transfer.save_model")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = checkpointer.restore(
        path, args=ocp.args.Composite(variables=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
    )
    return restored["variables"], dict(restored["meta"])
