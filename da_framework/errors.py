"""The errors a user can cause, and the one place that lists them.

The command line prints these as one line (``error: ...``, exit code 2) and shows the
traceback of anything else, since anything else is a bug.  Library code raises
:class:`UserError` (or one of the module-specific subclasses listed by :func:`user_errors`)
for bad input: an unknown name, a bad shape, a bad config value, a record that does not
match its config.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message names it and says how to fix it."""


def user_errors() -> tuple[type[Exception], ...]:
    """Every exception type that means "bad input", as the CLI catches them."""
    from da_framework.config import ConfigError
    from da_framework.data.domain import DomainError
    from da_framework.federated.partition import PartitionError
    from da_framework.losses.registry import LossError
    from da_framework.models.registry import ModelError
    from da_framework.train.loop import NonFiniteLossError
    from da_framework.train.parallel import ParallelError

    return (UserError, ConfigError, DomainError, LossError, ModelError, ParallelError, PartitionError, NonFiniteLossError)
