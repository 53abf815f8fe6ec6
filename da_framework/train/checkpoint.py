"""Checkpoints of a run through orbax: the train state, the history so far and the config.

:func:`train` saves every ``config.checkpoint_every`` steps into ``config.checkpoint_dir``
and, when that folder already holds a checkpoint of the same config, resumes from the
latest one.  Data iterators are deterministic functions of the seed, so the loop
fast-forwards them by the restored step count and a resumed run gives the same final
metrics as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from da_framework.config import ConfigError, ExperimentConfig

# Fields that may differ between a checkpoint and the run resuming from it.
_RESUME_FREE_KEYS = ("checkpoint_every", "checkpoint_dir", "eval_batch_size", "log_every")


def open_checkpoints(config: ExperimentConfig, max_to_keep: int = 2) -> ocp.CheckpointManager | None:
    """The checkpoint manager of a run, or None when checkpointing is off."""
    if not config.checkpoint_every:
        return None
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(Path(config.checkpoint_dir).resolve(), options=options)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUME_FREE_KEYS}


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, history: list[dict[str, Any]], config: ExperimentConfig) -> None:
    """Saves ``state`` (any pytree of arrays), the history and the config at ``step`` (synchronously)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            history=ocp.args.JsonSave({"history": history, "config": config.to_dict()}),
        ),
    )
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, template: Any, config: ExperimentConfig) -> tuple[Any, list[dict[str, Any]], int] | None:
    """Restores the latest checkpoint as ``(state, history, step)``, or None if there is none.

    Args:
      manager: from :func:`open_checkpoints`.
      template: a state with the right structure, shapes and dtypes (a freshly initialised one).
      config: the config of the resuming run; it must match the checkpoint's.

    Raises:
      ConfigError: if the checkpoint was written by a run with a different config or train-state structure.
    """
    step = manager.latest_step()
    if step is None:
        return None
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template), history=ocp.args.JsonRestore())
        )
    except ValueError as e:  # orbax: the saved tree's structure or shapes differ from the template's
        raise ConfigError(
            f"the checkpoint at step {step} in checkpoint_dir {config.checkpoint_dir!r} does not fit this run's train "
            f"state ({str(e).splitlines()[0][:120]}); it was written by another model/method or an older "
            "da_framework version (which kept terms' state as 'extras'): use a fresh checkpoint_dir or delete it"
        ) from None
    saved = restored.history
    if _comparable(saved["config"]) != _comparable(config.to_dict()):
        diff = sorted(k for k in _comparable(config.to_dict()) if saved["config"].get(k) != config.to_dict()[k])
        raise ConfigError(
            f"checkpoint_dir {config.checkpoint_dir!r} holds a checkpoint of a different run (keys differ: "
            f"{', '.join(diff)}); use a fresh checkpoint_dir or delete it"
        )
    return restored.state, list(saved["history"]), int(step)
