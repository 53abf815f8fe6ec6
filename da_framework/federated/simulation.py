"""The simulation engine: every sampled client of a round in one compiled program.

A round is ``round_fn(global_params, server_state, clients, client_ids, key)``:

1. every client starts from the global parameters and runs ``local_epochs`` passes of
   minibatch SGD over its own data (:func:`make_client_update`; a loop of the client's own
   number of steps); the clients run as the execution strategy says
   (:mod:`da_framework.federated.execution`: all ``jax.vmap``-ed, a compiled loop over
   clients, or chunks of vmapped clients; chosen per backend and model by default);
2. the server averages the updates ``w_k - w`` (weighted by example counts, optional
   clipping and noise; :func:`da_framework.federated.algorithms.aggregate`) and applies its
   optax optimiser to the pseudo-gradient (FedOpt).

Uneven client sizes: every client's data is zero-padded to the same length N with a
boolean example mask (:class:`ClientData`).  An epoch of a client with n examples is
``ceil(n / B)`` steps and the client loops over exactly ``E * ceil(n / B)`` steps (vmapped,
JAX runs the longest client's count and keeps the finished clients' states); a per-example
mask drops the padded rows of a client's last, partial batch from the supervised loss.  The
shuffling order of an epoch is ``argsort`` of uniform keys (padded rows sorted last), so a
client's batches depend only on its key, its data and N, never on the other clients.

With several devices the client axis is sharded over a 1-D mesh (``jax.jit`` + a
``NamedSharding``; no ``pmap``): each device runs its share of the clients, and the
weighted average becomes a cross-device reduction.  The result equals the one-device
round.  ``tests/federated_reference.py`` holds the plain sequential definition (a Python loop over
clients and steps, unpadded data) that the engine must agree with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from da_framework.errors import UserError
from da_framework.federated.algorithms import aggregate, client_deltas, proximal_term, server_update
from da_framework.federated.convs import loop_friendly_convs
from da_framework.federated.execution import Execution, model_has_convolutions, resolve_execution, scan_and_average
from da_framework.losses.registry import LossInputs
from da_framework.models.classifier import Classifier
from da_framework.train.method import Method
from da_framework.train.optimizers import build_optimizer
from da_framework.train.parallel import DATA_AXIS, ParallelError

Params = Any


class FederatedError(UserError):
    """Raised for inconsistent federated inputs (client data, shapes, settings)."""


@flax.struct.dataclass
class ClientData:
    """Padded data of one client, or of a stack of clients (leading client axis).

    Attributes:
      x: (N, ...) inputs, zero beyond ``num_examples``.
      y: (N,) int32 labels (0 for unlabelled clients and padding).
      mask: (N,) bool, True for real examples.
      num_examples: () int32 n, the client's example count (its FedAvg weight).
      labeled: () float32, 1 for a labelled client, 0 for an unlabelled (target) client.
    """

    x: Any
    y: Any
    mask: Any
    num_examples: Any
    labeled: Any

    @property
    def num_clients(self) -> int:
        """Size of the leading client axis of a stack."""
        return int(np.shape(self.num_examples)[0])

    @property
    def max_examples(self) -> int:
        """The padded length N."""
        return int(np.shape(self.mask)[-1])


def stack_clients(
    clients: Sequence[Mapping[str, np.ndarray]],
    labeled: Sequence[bool] | None = None,
    max_examples: int | None = None,
    pad_clients_to: int = 1,
    input_key: str = "image",
) -> ClientData:
    """Pads and stacks client datasets into one :class:`ClientData` (NumPy arrays).

    Args:
      clients: one ``{input_key: (n_k, ...), "label": (n_k,)}`` dict per client.
      labeled: per client, whether its labels may be used (default: all labelled).
        Labels of unlabelled clients are replaced by zeros here, so they cannot leak.
      max_examples: padded length N (default: the largest n_k).
      pad_clients_to: append empty clients (n = 0, weight 0) until the number of clients
        is a multiple of this (the number of devices the client axis is sharded over).
      input_key: the field holding the model inputs.
    """
    if not clients:
        raise FederatedError("stack_clients needs at least one client")
    labeled = [True] * len(clients) if labeled is None else list(labeled)
    if len(labeled) != len(clients):
        raise FederatedError(f"got {len(clients)} clients but {len(labeled)} labeled flags")
    sizes = [len(c[input_key]) for c in clients]
    n_max = max(sizes) if max_examples is None else max_examples
    if max(sizes) > n_max:
        raise FederatedError(f"a client has {max(sizes)} examples, more than max_examples={n_max}")
    if n_max == 0:
        raise FederatedError("every client is empty")
    shape = np.shape(clients[int(np.argmax(sizes))][input_key])[1:]
    total = math.ceil(len(clients) / pad_clients_to) * pad_clients_to
    x = np.zeros((total, n_max, *shape), np.float32)
    y = np.zeros((total, n_max), np.int32)
    mask = np.zeros((total, n_max), bool)
    for k, (c, n) in enumerate(zip(clients, sizes)):
        if n and np.shape(c[input_key])[1:] != shape:
            raise FederatedError(f"client {k} inputs have shape {np.shape(c[input_key])[1:]}, expected {shape}")
        x[k, :n] = c[input_key]
        if labeled[k]:
            y[k, :n] = c["label"]
        mask[k, :n] = True
    num = np.zeros((total,), np.int32)
    num[: len(sizes)] = sizes
    lab = np.zeros((total,), np.float32)
    lab[: len(labeled)] = np.asarray(labeled, np.float32)
    return ClientData(x=x, y=y, mask=mask, num_examples=num, labeled=lab)


@dataclasses.dataclass(frozen=True)
class LocalTraining:
    """What every client does in a round (static: it defines the compiled program).

    Attributes:
      model: the classifier (parameters only: models with mutable collections such as
        BatchNorm statistics are not supported by the federated engine).
      batch_size: client minibatch size B.
      local_epochs: passes over the client's data per round E.
      client_lr: client SGD learning rate.
      mu: FedProx proximal weight (0: FedAvg).
      adaptation: extra loss terms on each client's own batch (registered losses, see
        :func:`da_framework.federated.adaptation.adaptation_method`), or None.
      input_key: the batch field holding model inputs.
    """

    model: Classifier
    batch_size: int
    local_epochs: int = 1
    client_lr: float = 0.05
    mu: float = 0.0
    adaptation: Method | None = None
    input_key: str = "image"

    def steps_per_epoch(self, max_examples: int) -> int:
        """Scan steps per epoch for padded length N: ceil(N / B)."""
        return max(1, math.ceil(max_examples / self.batch_size))

    def client_tx(self) -> optax.GradientTransformation:
        """The client optimiser: plain SGD (no momentum, no weight decay), as in FedAvg / FedProx,
        from the project's one optimiser factory."""
        return build_optimizer("sgd", self.client_lr, momentum=0.0)


def epoch_order(key: jax.Array, mask: jax.Array) -> jax.Array:
    """A random order of the N rows with the real (masked-in) rows first."""
    u = jax.random.uniform(key, mask.shape)
    return jnp.argsort(jnp.where(mask, u, 2.0))


def _client_keys(client_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    k_order, k_steps = jax.random.split(client_key)
    return k_order, k_steps


def client_objective(
    spec: LocalTraining,
    params: Params,
    global_params: Params,
    x: jax.Array,
    y: jax.Array,
    example_mask: jax.Array,
    labeled: jax.Array,
    key: jax.Array,
    progress: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One client's loss on one batch: masked cross-entropy (labelled clients), the FedProx
    term and the adaptation terms (on the client's own batch only).

    Returns:
      ``(total loss, supervised cross-entropy)``.
    """
    k_model, k_loss = jax.random.split(key)
    logits, feats = spec.model.apply({"params": params}, x, train=True, rngs={"dropout": k_model})
    ce_each = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    m = example_mask.astype(jnp.float32)
    ce = jnp.sum(ce_each * m) / jnp.maximum(jnp.sum(m), 1.0)
    total = labeled * ce
    if spec.mu:
        total = total + proximal_term(params, global_params, spec.mu)
    if spec.adaptation is not None:
        inputs = LossInputs(
            source_features=feats, target_features=feats, source_logits=logits, target_logits=logits,
            source_labels=y, progress=progress, key=k_loss, source_inputs=x, target_inputs=x,
            params=params,
            apply_model=lambda p, xx, train=True: spec.model.apply({"params": p}, xx, train=False),
        )
        adapt = spec.adaptation.loss({}, {}, inputs).total
        total = total + adapt
    return total, ce


def make_client_update(
    spec: LocalTraining, max_examples: int, loop_convs: bool = False
) -> Callable[[Params, ClientData, jax.Array], tuple[Params, dict[str, jax.Array]]]:
    """Builds ``client_update(global_params, data, key) -> (params, metrics)`` for ONE client.

    The function is pure and unbatched; the engine maps it over clients and the Flower
    adapter calls it as is.  Its local steps are a loop whose trip count is the client's own
    ``E * ceil(n / B)`` (a ``while`` loop with a traced bound, so one compiled program serves
    every client size); step ``s`` of epoch ``e`` has the step index ``t = e * ceil(N / B) + s``
    (its key and progress), as if every epoch were padded to ``ceil(N / B)`` steps.  Under
    ``vmap`` JAX turns the loop into ``max_k(E * ceil(n_k / B))`` steps with the finished
    clients' states kept by a select, i.e. the padded, masked loop.

    ``loop_convs=True`` routes the objective's convolutions through
    :func:`da_framework.federated.convs.loop_friendly_convs` (same values; fast on XLA:CPU
    inside the loop).
    """
    steps_per_epoch = spec.steps_per_epoch(max_examples)
    total_steps = spec.local_epochs * steps_per_epoch
    tx = spec.client_tx()
    b = spec.batch_size
    objective = functools.partial(client_objective, spec)
    if loop_convs:
        objective = loop_friendly_convs(objective)
    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def client_update(global_params: Params, data: ClientData, key: jax.Array) -> tuple[Params, dict[str, jax.Array]]:
        if data.mask.shape[-1] != max_examples:
            raise FederatedError(f"client data padded to {data.mask.shape[-1]} examples, engine built for {max_examples}")
        k_order, k_steps = _client_keys(key)
        orders = jax.vmap(lambda e: epoch_order(jax.random.fold_in(k_order, e), data.mask))(
            jnp.arange(spec.local_epochs)
        )
        n = data.num_examples
        n_safe = jnp.maximum(n, 1)
        real_steps = (n + b - 1) // b

        def step(i, carry):
            params, opt_state, loss_sum = carry
            e, s = i // jnp.maximum(real_steps, 1), i % jnp.maximum(real_steps, 1)
            t = e * steps_per_epoch + s
            pos = s * b + jnp.arange(b)
            idx = orders[e][pos % n_safe]  # wrap around: every row is a real example
            (loss, _), grads = grad_fn(
                params, global_params, data.x[idx], data.y[idx], pos < n, data.labeled,
                jax.random.fold_in(k_steps, t), t.astype(jnp.float32) / total_steps,
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss_sum + loss

        init = (global_params, tx.init(global_params), jnp.zeros((), jnp.float32))
        num_real = real_steps * spec.local_epochs
        params, _, loss_sum = jax.lax.fori_loop(0, num_real, step, init)
        return params, {"loss": loss_sum / jnp.maximum(num_real, 1), "local_steps": num_real}

    return client_update


RoundFn = Callable[[Params, optax.OptState, ClientData, jax.Array, jax.Array], tuple[Params, optax.OptState, dict[str, jax.Array]]]


def make_round_fn(
    spec: LocalTraining,
    server_tx: optax.GradientTransformation,
    max_examples: int,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
    client_chunk: int | None = None,
    strategy: str | Execution = "auto",
    input_shape: tuple[int, ...] | None = None,
) -> RoundFn:
    """Builds the jitted ``round_fn(global_params, server_state, clients, client_ids, key)``.

    ``clients`` is a stacked :class:`ClientData` (place it with :func:`place_clients` to
    shard it over devices), ``client_ids`` the (m,) int32 ids of the stacked clients (each
    client's randomness is ``fold_in(key, id)``, so it does not depend on who else was
    sampled).  Returns ``(global_params, server_state, metrics)``.

    ``strategy`` says how the clients run (:mod:`da_framework.federated.execution`):
    ``"vmap"`` (all at once), ``"scan"`` (one after another, each for its own number of
    steps), ``"chunk"`` (``client_chunk`` vmapped clients at a time, sorted by size) or
    ``"auto"`` (scan on CPU, vmap on accelerators; a given
    ``client_chunk`` means chunk).  ``input_shape`` (one example's shape) lets ``"auto"``
    look for convolutions without waiting for data; without it the model is traced on the
    first call's data.  The result is the same either way, up to float rounding.
    """
    if isinstance(strategy, Execution):
        return _jit_round(spec, server_tx, max_examples, clip_norm, noise_multiplier, strategy)
    if input_shape is None:
        built: dict[tuple[int, ...], RoundFn] = {}

        def lazy(global_params, server_state, clients, client_ids, key):
            shape = tuple(np.shape(clients.x)[2:])
            if shape not in built:
                built[shape] = make_round_fn(spec, server_tx, max_examples, clip_norm, noise_multiplier,
                                             client_chunk, strategy, shape)
            return built[shape](global_params, server_state, clients, client_ids, key)

        return lazy
    execution = resolve_execution(strategy, client_chunk, model_has_convolutions(spec.model, input_shape))
    return _jit_round(spec, server_tx, max_examples, clip_norm, noise_multiplier, execution)


def _run_clients(client_update: Callable, execution: Execution, global_params: Params, clients: ClientData,
                 keys: jax.Array) -> tuple[Params, dict[str, jax.Array]]:
    """Every client's ``client_update`` as the execution strategy says; outputs in client order."""
    if execution.kind == "vmap":
        return jax.vmap(client_update, in_axes=(None, 0, 0))(global_params, clients, keys)
    if execution.kind == "scan":
        return jax.lax.map(lambda a: client_update(global_params, *a), (clients, keys))
    # chunk: sort by size so a chunk's clients need similar step counts, then undo the sort
    order = jnp.argsort(clients.num_examples, stable=True)
    take = lambda tree, idx: jax.tree.map(lambda v: v[idx], tree)  # noqa: E731
    out = jax.lax.map(lambda a: client_update(global_params, *a), take((clients, keys), order),
                      batch_size=execution.chunk)
    return take(out, jnp.argsort(order))


def _jit_round(spec: LocalTraining, server_tx: optax.GradientTransformation, max_examples: int,
               clip_norm: float | None, noise_multiplier: float, execution: Execution) -> RoundFn:
    """The jitted round for a resolved :class:`Execution`."""
    client_update = make_client_update(spec, max_examples, loop_convs=execution.loop_convs)

    def round_fn(global_params, server_state, clients, client_ids, key):
        k_clients, k_noise = jax.random.split(key)
        keys = jax.vmap(lambda i: jax.random.fold_in(k_clients, i))(client_ids)
        if execution.kind == "scan" and not noise_multiplier:  # average on the fly, no stacked updates
            delta, am, cm = scan_and_average(client_update, global_params, clients, keys, clip_norm)
        else:
            new_params, cm = _run_clients(client_update, execution, global_params, clients, keys)
            deltas = client_deltas(new_params, global_params)
            delta, am = aggregate(deltas, clients.num_examples, k_noise, clip_norm, noise_multiplier)
        params, server_state = server_update(global_params, server_state, delta, server_tx)
        w = clients.num_examples.astype(jnp.float32)
        metrics = {"client_loss": jnp.sum(cm["loss"] * w) / jnp.maximum(jnp.sum(w), 1.0), **am}
        return params, server_state, metrics

    return jax.jit(round_fn)


def make_client_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices; its axis carries clients."""
    devices = jax.devices()
    if num_devices > len(devices):
        raise ParallelError(
            f"asked for {num_devices} devices but only {len(devices)} are visible; on CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts"
        )
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def place_clients(clients: ClientData, client_ids: np.ndarray, mesh: Mesh | None) -> tuple[ClientData, jax.Array]:
    """Puts stacked clients (and their ids) on device, split over the mesh's client axis."""
    ids = np.asarray(client_ids, np.int32)
    if mesh is None:
        return jax.tree.map(jnp.asarray, clients), jnp.asarray(ids)
    n = mesh.devices.size
    if clients.num_clients % n:
        raise ParallelError(
            f"{clients.num_clients} stacked clients do not split over {n} devices; "
            f"stack with pad_clients_to={n}"
        )
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.device_put(clients, sharding), jax.device_put(ids, sharding)


def replicate_tree(tree: Any, mesh: Mesh | None) -> Any:
    """Places a pytree fully on every device of the mesh (or as is without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def padded_client_ids(ids: Sequence[int], total: int, num_clients: int) -> np.ndarray:
    """Ids of ``total`` stacked clients: the sampled ``ids``, then fresh ids for padding."""
    out = list(ids) + [num_clients + i for i in range(total - len(ids))]
    return np.asarray(out, np.int32)
