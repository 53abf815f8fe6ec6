"""DomainBed's training protocol for its MNIST datasets, as config values (one held-out environment).

From facebookresearch/DomainBed (Gulrajani & Lopez-Paz, ICLR 2021): ``hparams_registry.py``
(defaults for ``SMALL_IMAGES`` = RotatedMNIST, ColoredMNIST: Adam, ``lr`` 1e-3,
``weight_decay`` 0, ``batch_size`` 64 per training environment), ``datasets.py``
(``N_STEPS = 5001``, ``CHECKPOINT_FREQ = 100``) and ``networks.py`` (``MNIST_CNN``, here the
``mnist_cnn`` backbone, with one linear layer on top).  ``source`` is every environment but
the test one, in DomainBed's order; ``target`` is the test environment, whose ``test`` split
is its in-split (the number DomainBed reports; :mod:`da_framework.data.environments`).

:func:`domainbed_pairs` lists a sweep's (sources, target) pairs, with the leave-one-out runs
its ``leave_one_out`` selection rule needs (:mod:`da_framework.bench.dg_selection`), and
:func:`domainbed_space` the random-search space of a method (``hparams_registry.py``'s
``SMALL_IMAGES`` branches) in :mod:`da_framework.bench.search` form.

The step forwards the training environments only (``forward_target=False``), as DomainBed's
``update`` does: the test environment's batch is not run through the model.  Known
differences, not closed here: initialisation is flax's, not PyTorch's; the search draws from NumPy generators seeded per
(sample, trial, method), so its values are DomainBed's distributions, not its exact draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from da_framework.data.dg_digits import SHIFT_ENVIRONMENTS
from da_framework.data.dg_mnist import COLOUR_FLIP, ROTATIONS
from da_framework.errors import UserError

ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "rmnist": tuple(f"rmnist/{a}" for a in ROTATIONS),
    "cmnist": tuple(f"cmnist/{e}" for e in COLOUR_FLIP),
    "rdigits": tuple(f"rdigits/{a}" for a in ROTATIONS),
    "digits_env": tuple(f"digits_env/{s}" for s in SHIFT_ENVIRONMENTS),
}


def domainbed_dg(family: str, test_env: str, steps: int = 5001) -> dict[str, Any]:
    """ExperimentConfig overrides: train on every environment of ``family`` but ``test_env``, test on it.

    Args:
      family: ``"rmnist"``, ``"cmnist"``, ``"rdigits"`` or ``"digits_env"``.
      test_env: the held-out environment's name without the family, e.g. ``"0"`` or ``"-90%"``.
      steps: training steps (DomainBed: 5001).

    Raises:
      UserError: for an unknown family or environment (the message lists the valid ones).
    """
    if family not in ENVIRONMENTS:
        raise UserError(f"unknown DG family {family!r}; valid: {', '.join(ENVIRONMENTS)}")
    names = ENVIRONMENTS[family]
    test = f"{family}/{test_env}"
    if test not in names:
        raise UserError(f"{family} has no environment {test_env!r}; valid: {', '.join(n.split('/', 1)[1] for n in names)}")
    return {
        "source": ",".join(n for n in names if n != test),
        "target": test,
        "model": "mnist_cnn",
        "bottleneck_dim": None,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "batch_size": 64,
        "steps": steps,
        "eval_every": 100,
        "eval_target_val": True,  # the test environment's out-split, for the test-domain oracle
        "forward_target": False,  # DomainBed's update never sees the test environment
    }


def domainbed_pairs(family: str, leave_one_out: bool = True,
                    test_envs: Sequence[str] | None = None) -> list[tuple[list[str], str]]:
    """A DG sweep's ``(sources, target)`` pairs: each environment held out in turn, then
    (``leave_one_out``) each unordered pair ``{t, v}`` held out together as target ``"t,v"``,
    the runs DomainBed's leave-one-domain-out rule reads (its ``test_envs=[t, v]``).

    RotatedMNIST: 6 main + 15 leave-one-out pairs; ColoredMNIST: 3 + 3.  ``test_envs`` (names
    without the family, e.g. ``["0", "75"]``) keeps the main runs of those test environments and
    the leave-one-out pairs that contain one of them (all that their rule reads).

    Raises:
      UserError: for an unknown family or test environment (the message lists the valid ones).
    """
    if family not in ENVIRONMENTS:
        raise UserError(f"unknown DG family {family!r}; valid: {', '.join(ENVIRONMENTS)}")
    names = ENVIRONMENTS[family]
    keep = set(names)
    if test_envs is not None:
        short = {n.split("/", 1)[1]: n for n in names}
        unknown = [t for t in test_envs if t not in short]
        if unknown or not test_envs:
            raise UserError(f"{family} has no test environment {', '.join(unknown) or '(none given)'}; "
                            f"valid: {', '.join(short)}")
        keep = {short[t] for t in test_envs}
    pairs = [([n for n in names if n != t], t) for t in names if t in keep]
    if leave_one_out:
        pairs += [([n for n in names if n not in (t, v)], f"{t},{v}") for t, v in itertools.combinations(names, 2)
                  if t in keep or v in keep]
    return pairs


_DANN_ALT_SPACE: dict[str, str] = {
    "dann_lambda": "log10_uniform(-2, 2)", "lr_g": "log10_uniform(-4.5, -2.5)", "lr_d": "log10_uniform(-4.5, -2.5)",
    "weight_decay_d": "log10_uniform(-6, -2)", "d_steps_per_g_step": "int_pow2_uniform(0, 3)",
    "grad_penalty": "log10_uniform(-2, 1)", "beta1": "choice([0.0, 0.5])", "mlp_width": "int_pow2_uniform(6, 10)",
    "mlp_depth": "choice([3, 4, 5])",  # mlp_dropout (choice([0, 0.1, 0.5]) in DomainBed) is not implemented
}
# hparams_registry.py (SMALL_IMAGES): every algorithm's own hyper-parameters, as "<loss>.<hparam>".
COMMON_SPACE: dict[str, str] = {"learning_rate": "log10_uniform(-4.5, -2.5)", "batch_size": "int_pow2_uniform(3, 9)"}
LOSS_SPACES: dict[str, dict[str, str]] = {
    "irm": {"irm_lambda": "log10_uniform(-1, 5)", "irm_penalty_anneal_iters": "int_log10_uniform(0, 4)"},
    "vrex": {"vrex_lambda": "log10_uniform(-1, 5)", "vrex_penalty_anneal_iters": "int_log10_uniform(0, 4)"},
    "ib": {"ib_lambda": "log10_uniform(-1, 5)", "ib_penalty_anneal_iters": "int_log10_uniform(0, 4)"},
    "mixup": {"mixup_alpha": "log10_uniform(-1, 1)"},
    "group_dro": {"eta": "log10_uniform(-3, -1)"},
    "coral_envs": {"mmd_gamma": "log10_uniform(-1, 1)"},
    "mmd_envs": {"mmd_gamma": "log10_uniform(-1, 1)"},
    "sd": {"sd_reg": "log10_uniform(-5, -1)"},
    "dann_envs": {"dann_lambda": "log10_uniform(-2, 2)", "mlp_width": "int_pow2_uniform(6, 10)", "mlp_depth": "choice([3, 4, 5])"},
    "cdann_envs": {"dann_lambda": "log10_uniform(-2, 2)", "mlp_width": "int_pow2_uniform(6, 10)", "mlp_depth": "choice([3, 4, 5])"},
    # DomainBed's own (alternating) DANN: two Adams with lr_g / lr_d, so the sampled learning_rate is not read.
    "dann_alt": _DANN_ALT_SPACE,
    "cdann_alt": _DANN_ALT_SPACE,
    "mldg": {"mldg_beta": "log10_uniform(-1, 1)"},
    "fish": {"meta_lr": "choice([0.05, 0.1, 0.5])"},
    "andmask": {"tau": "uniform(0.5, 1)"},
    "sandmask": {"tau": "uniform(0, 1)", "k": "log10_uniform(-3, 5)"},
    "iga": {"penalty": "log10_uniform(1, 5)"},
    "rsc": {"rsc_f_drop_factor": "uniform(0, 0.5)", "rsc_b_drop_factor": "uniform(0, 0.5)"},
    "fishr": {"fishr_lambda": "log10_uniform(1, 4)", "fishr_penalty_anneal_iters": "int_uniform(0, 5000)",
              "fishr_ema": "uniform(0.9, 0.99)"},
    "eqrm": {"eqrm_quantile": "uniform(0.5, 0.99)", "eqrm_burnin_iters": "log10_uniform(2.5, 3.5)",
             "eqrm_lr": "log10_uniform(-7, -5)"},
    "cad": {"lmbda": "choice([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])", "temperature": "choice([0.05, 0.1])"},
    "condcad": {"lmbda": "choice([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])", "temperature": "choice([0.05, 0.1])"},
    "sagnet": {"sag_w_adv": "log10_uniform(-2, 1)"},
    "mtl": {"mtl_ema": "choice([0.5, 0.9, 0.99, 1.0])"},
}
# Algorithms that need their own model (sweep ``method_settings``).  ARM's support groups are its
# per-environment batches, so its batch size stays DomainBed's default 64 (not searched: a
# sampled batch_size would have to move model_kwargs support_size with it).
ALGORITHM_SETTINGS: dict[str, dict[str, Any]] = {
    "mtl": {"model": "mtl", "model_kwargs": {"featurizer": "mnist_cnn"}},
    "arm": {"model": "arm", "model_kwargs": {"featurizer": "mnist_cnn", "support_size": 64}, "batch_size": 64},
}


def domainbed_space(method: str) -> dict[str, str]:
    """DomainBed's random-search space of ``method`` (a method spec): learning rate and batch
    size, plus every term's own hyper-parameters, keyed as sweep grid keys (``irm.irm_lambda``).

    A term whose hyper-parameters DomainBed does not search (``cross_entropy``) adds nothing;
    a method whose :data:`ALGORITHM_SETTINGS` fix ``batch_size`` (ARM) does not search it.
    """
    from da_framework.train.method import parse_method

    space = dict(COMMON_SPACE)
    if "batch_size" in ALGORITHM_SETTINGS.get(method, {}):
        del space["batch_size"]
    for term in parse_method(method).terms:
        space.update({f"{term.key}.{k}": v for k, v in LOSS_SPACES.get(term.loss, {}).items()})
    return space


# DomainBed's names -> method specs (docs/domain_generalisation.md lists the files).
ALGORITHMS: dict[str, str] = {
    "ERM": "cross_entropy", "IRM": "cross_entropy + irm", "VREx": "cross_entropy + vrex", "Mixup": "mixup",
    "CORAL": "cross_entropy + coral_envs", "MMD": "cross_entropy + mmd_envs", "SD": "cross_entropy + sd",
    "GroupDRO": "group_dro", "IB_ERM": "cross_entropy + ib", "IB_IRM": "cross_entropy + irm + ib",
    "CAD": "cross_entropy + cad", "CondCAD": "cross_entropy + condcad",
    "DANN": "cross_entropy + dann_alt", "CDANN": "cross_entropy + cdann_alt",  # DomainBed's alternating updates
    "DANN_grl": "cross_entropy + dann_envs", "CDANN_grl": "cross_entropy + cdann_envs",  # one update through a GRL
    "MLDG": "mldg", "Fish": "fish", "ANDMask": "andmask", "SANDMask": "sandmask", "IGA": "iga", "RSC": "rsc",
    "Fishr": "cross_entropy + fishr", "SelfReg": "cross_entropy + selfreg", "EQRM": "eqrm",
    "SagNet": "sagnet", "MTL": "mtl", "ARM": "arm",
}


def domainbed_sweep(family: str, algorithms: list[str] | None = None, steps: int = 5001, samples: int = 20,
                    seeds: tuple[int, ...] = (0, 1, 2), leave_one_out: bool = True, search_seed: int = 0,
                    per_trial: bool = True, test_envs: Sequence[str] | None = None,
                    batch_size: int | None = None) -> dict[str, Any]:
    """A ``da bench`` sweep dict of DomainBed's protocol on ``family``: algorithms (DomainBed
    names, default all of :data:`ALGORITHMS`) x held-out environments (and leave-one-out pairs)
    x ``samples`` random hyper-parameter points (sample 0: the defaults) x trial ``seeds``.

    DomainBed's published sweep is ``samples=20``, three trials, 5001 steps, a new draw per trial
    (``per_trial``; False shares a sample's values across its trials, so ``da bench
    --vmap-seeds`` trains them as one program); ``da bench SWEEP --plan`` prints every run and
    its sampled values before anything trains.  ``test_envs`` restricts the held-out environments
    (:func:`domainbed_pairs`); the sweep keeps its name, so its records join the full sweep's.
    ``batch_size`` fixes the batch size instead of sampling it (not DomainBed's protocol, so the
    sweep's name gains ``_batch<N>``): then the samples of an algorithm share array shapes and
    ``da bench --vmap-samples`` trains them as one program (:mod:`~da_framework.bench.vmap_samples`).
    """
    names = algorithms if algorithms is not None else list(ALGORITHMS)
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown:
        raise UserError(f"unknown DomainBed algorithm(s) {', '.join(unknown)}; valid: {', '.join(ALGORITHMS)}")
    methods = [ALGORITHMS[a] for a in names]
    first = ENVIRONMENTS[family][0].split("/", 1)[1] if family in ENVIRONMENTS else ""
    base = {k: v for k, v in domainbed_dg(family, first, steps).items() if k not in ("source", "target")}
    spaces = {m: domainbed_space(m) for m in methods}
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size}")
        base["batch_size"] = batch_size
        spaces = {m: {k: v for k, v in space.items() if k != "batch_size"} for m, space in spaces.items()}
    return {
        "name": f"{family}_domainbed" + ("" if (steps, samples) == (5001, 20) else f"_steps{steps}_samples{samples}")
                + ("" if batch_size is None else f"_batch{batch_size}"),
        "base": base,
        "methods": methods,
        "method_settings": {m: ALGORITHM_SETTINGS[m] for m in methods if m in ALGORITHM_SETTINGS},
        "pairs": domainbed_pairs(family, leave_one_out, test_envs),
        "seeds": list(seeds),
        "search": {"samples": samples, "seed": search_seed, "per_trial": per_trial,
                   "spaces": spaces},
    }


def domainbed_sweep_from_env(family: str, algorithms: str | None = None, steps: int = 5001, samples: int = 20,
                             seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """:func:`domainbed_sweep` sized by the environment, for sweep files: ``$DA_DG_ALGORITHMS``
    (comma-separated DomainBed names, default ``algorithms`` or all), ``$DA_DG_STEPS``,
    ``$DA_DG_SAMPLES``, ``$DA_DG_SEEDS`` (comma-separated trial seeds), ``$DA_DG_PER_TRIAL``
    (``0``: one draw per sample for all trials), ``$DA_DG_LEAVE_ONE_OUT`` (``0``: only the
    main runs, no leave-one-domain-out pairs, so that rule has no table) and ``$DA_DG_TEST_ENVS``
    (comma-separated test environments without the family, e.g. ``0,75``; default all) and
    ``$DA_DG_BATCH_SIZE`` (a fixed batch size, not sampled: ``batch_size`` of :func:`domainbed_sweep`)."""
    import os

    names = os.environ.get("DA_DG_ALGORITHMS", algorithms or "")
    trial_seeds = os.environ.get("DA_DG_SEEDS")
    try:
        seeds = tuple(int(s) for s in trial_seeds.split(",")) if trial_seeds else seeds
    except ValueError:
        raise UserError(f"DA_DG_SEEDS must be comma-separated integers, e.g. 0,1,2, got {trial_seeds!r}") from None
    batch = os.environ.get("DA_DG_BATCH_SIZE")
    if batch is not None and not batch.strip().isdigit():
        raise UserError(f"DA_DG_BATCH_SIZE must be a positive integer, e.g. 64, got {batch!r}")
    return domainbed_sweep(family, names.split(",") if names else None, steps=int(os.environ.get("DA_DG_STEPS", str(steps))),
                           samples=int(os.environ.get("DA_DG_SAMPLES", str(samples))), seeds=seeds,
                           leave_one_out=os.environ.get("DA_DG_LEAVE_ONE_OUT", "1") != "0",
                           per_trial=os.environ.get("DA_DG_PER_TRIAL", "1") != "0",
                           test_envs=[t.strip() for t in os.environ["DA_DG_TEST_ENVS"].split(",")] if os.environ.get("DA_DG_TEST_ENVS") else None,
                           batch_size=int(batch) if batch is not None else None)
