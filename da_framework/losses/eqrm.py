"""EQRM: minimise the alpha-quantile of the training environments' risks (Quantile Risk Minimization).

Eastwood, Robey, Singh, von Kugelgen, Hassani, Pappas & Scholkopf, "Probable Domain
Generalization via Quantile Risk Minimization", NeurIPS 2022, Algorithm 1.  The variant is
DomainBed's (facebookresearch/DomainBed, ``domainbed/algorithms.py``, class ``EQRM`` with the
``Nonparametric`` distribution, ``KernelDensityEstimator``, ``estimate_bandwidth`` and
``continuous_bisect_fun_left`` of ``domainbed/lib/misc.py``; read at commit 22002ea):

* the risks ``R_1..R_K``: each training environment's mean cross-entropy;
* for ``eqrm_burnin_iters`` steps, ERM: the loss is ``mean_e R_e``;
* afterwards the loss is the ``eqrm_quantile``-quantile alpha of a Gaussian kernel density
  estimate of the K risks: kernels ``N(R_e, h^2)`` with DomainBed's default bandwidth rule
  ``"Gauss-optimal"``, ``h = 1.06 std(R) K^(-1/5)`` (unbiased std), CDF
  ``F(t) = mean_e Phi((t - R_e) / h)``, and the quantile found as DomainBed finds it: a
  bisection of ``F(t) = alpha`` on ``[min R + h z, max R + h z]`` (``z = Phi^-1(alpha)``),
  32 halvings (moving the upper end where ``F(mid) > alpha``), stopping early when the
  midpoint no longer changes, returning the last midpoint.  Its gradient is DomainBed's
  autograd one: the midpoint is an average of the bracket's ends, so the gradient is
  ``a grad(min R + h z) + b grad(max R + h z)`` with the bisection's weights a + b = 1 (the
  comparisons carry none); it is not the implicit-function gradient of the exact quantile.
  ``eqrm_quantile < 0`` is DomainBed's encoding of alpha = 1 - exp(q) very close to 1, where
  the loss is ``mean_e (R_e + h sqrt(-2 q))``.

Defaults are DomainBed's (``hparams_registry.py``, every dataset): ``eqrm_quantile = 0.75``,
``eqrm_burnin_iters = 2500``; search space ``U(0.5, 0.99)`` and ``10**U(2.5, 3.5)`` (not
rounded).  ``steps_of`` counts the burn-in as the other DG terms count their anneal
(:mod:`~da_framework.losses.dg_common`).

The learning-rate change is reproduced: DomainBed re-creates its Adam at the burn-in step with
learning rate ``eqrm_lr`` (default 1e-6, search ``10**U(-7, -5)``, against the ERM phase's
``lr``, 1e-3 on small images).  This term registers ``optimizer_reset="eqrm_burnin_iters"``
and ``lr_after_reset="eqrm_lr"``: the standard step builds a fresh optimiser state at that step
and sets its learning rate to ``eqrm_lr`` (the run's optimiser keeps its rate in its state,
``optax.inject_hyperparams``, so the run needs ``lr_schedule="constant"``, DomainBed's).  A loss
scale could not stand in for it: Adam's step ``lr m / (sqrt(v) + eps)`` is unchanged when the
loss is multiplied by a constant (up to eps).

Other known differences: DomainBed compares ``update_count == eqrm_burnin_iters`` to reset, so
its non-integer random draws of ``eqrm_burnin_iters`` never reset Adam nor switch to
``eqrm_lr`` (in its sweeps the quantile phase trains at ``lr``); here the reset and the switch
fire at the first step whose count reaches the burn-in, integer or not, as the paper intends.  DomainBed runs one
forward pass per environment; the step here runs one pooled pass (the same for models without
batch statistics).  Where all K risks are equal the bandwidth is 0 and the quantile is that
common risk; the std's gradient there is taken as 0 instead of torch's NaN.  At least two
environments are needed (the std of one risk is undefined).

Method: ``"eqrm"`` alone (it replaces ``cross_entropy``; its burn-in value is the mean risk).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from da_framework.losses.dg_common import DOMAINBED_STEPS, anneal_weight, environment_risks, labelled_views
from da_framework.losses.registry import LossError, LossInputs, register_loss

BISECTION_STEPS = 32  # DomainBed's continuous_bisect_fun_left default


def gauss_optimal_bandwidth(x: jax.Array) -> jax.Array:
    """DomainBed's ``"Gauss-optimal"`` KDE bandwidth ``1.06 std(x) n^(-1/5)`` (unbiased std, n >= 2).

    A zero std has gradient 0 here (torch's is NaN).
    """
    n = x.shape[0]
    var = jnp.sum((x - jnp.mean(x)) ** 2) / (n - 1)
    safe = jnp.where(var > 0, var, 1.0)
    std = jnp.where(var > 0, jnp.sqrt(safe), 0.0)
    return 1.06 * std * n ** (-0.2)


def kde_cdf(t: jax.Array, data: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """``mean_e Phi((t - data_e) / h)``, the CDF at ``t`` of the Gaussian KDE of ``data``.

    A zero bandwidth is the empirical CDF's limit (a step, 1/2 at a data point).
    """
    h = jnp.where(bandwidth > 0, bandwidth, 1.0)
    smooth = ndtr((t - data) / h)
    step = jnp.where(t > data, 1.0, jnp.where(t < data, 0.0, 0.5))
    return jnp.mean(jnp.where(bandwidth > 0, smooth, step))


def kde_quantile(risks: jax.Array, alpha: float, steps: int = BISECTION_STEPS) -> jax.Array:
    """DomainBed's ``Nonparametric().icdf(alpha)`` of a (K,) risk vector, K >= 2 (module doc).

    Args:
      risks: the environments' risks (differentiable).
      alpha: the quantile in (0, 1), or a negative ``log(1 - alpha)`` (DomainBed's q < 0 branch).
      steps: the bisection's halvings (DomainBed: 32).

    Returns:
      the scalar quantile, with DomainBed's gradient through the bisection's bracket ends.
    """
    if risks.ndim != 1 or risks.shape[0] < 2:
        raise LossError(f"eqrm: needs a vector of at least 2 environment risks, got shape {risks.shape}")
    data = jnp.sort(risks)
    h = gauss_optimal_bandwidth(data)
    if alpha < 0:
        return jnp.mean(data + h * math.sqrt(-2.0 * alpha))
    z = ndtri(jnp.asarray(alpha, data.dtype))
    lo, hi = data[0] + h * z, data[-1] + h * z
    cdf = lambda t: kde_cdf(t, jax.lax.stop_gradient(data), jax.lax.stop_gradient(h))  # only compared with alpha

    def body(_: int, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        lo, hi, k, done = carry
        above = cdf(jax.lax.stop_gradient(k)) > alpha
        new_lo, new_hi = jnp.where(above, lo, k), jnp.where(above, k, hi)
        next_k = 0.5 * (new_lo + new_hi)
        stop = done | (jax.lax.stop_gradient(next_k) == jax.lax.stop_gradient(k))
        keep = lambda old, new: jnp.where(done, old, new)
        return keep(lo, new_lo), keep(hi, new_hi), jnp.where(stop, k, next_k), stop

    _, _, k, _ = jax.lax.fori_loop(0, steps, body, (lo, hi, 0.5 * (lo + hi), jnp.asarray(False)))
    return k


def _check(eqrm_quantile: float, eqrm_burnin_iters: float, eqrm_lr: float, steps_of: float) -> None:
    for name, value in (("eqrm_quantile", eqrm_quantile), ("eqrm_burnin_iters", eqrm_burnin_iters),
                        ("eqrm_lr", eqrm_lr), ("steps_of", steps_of)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LossError(f"eqrm: {name} must be a finite number, got {value!r}")
    if eqrm_quantile == 0 or eqrm_quantile >= 1:
        raise LossError(f"eqrm: eqrm_quantile must be in (0, 1) (or < 0 for log(1 - alpha)), got {eqrm_quantile!r}")
    if eqrm_burnin_iters < 0:
        raise LossError(f"eqrm: eqrm_burnin_iters must be >= 0, got {eqrm_burnin_iters!r}")
    if steps_of <= 0:
        raise LossError(f"eqrm: steps_of must be > 0, got {steps_of!r}")
    if eqrm_lr <= 0:
        raise LossError(f"eqrm: eqrm_lr must be > 0, got {eqrm_lr!r}")


@register_loss(
    "eqrm",
    description="EQRM: the alpha-quantile (Gaussian KDE) of the environments' risks after an ERM burn-in (DomainBed's EQRM)",
    reference="Eastwood et al., 'Probable Domain Generalization via Quantile Risk Minimization', NeurIPS 2022; "
              "DomainBed's EQRM",
    optimizer_reset="eqrm_burnin_iters",  # DomainBed re-creates its Adam at that step ...
    lr_after_reset="eqrm_lr",  # ... with this learning rate
)
def eqrm_term(
    inputs: LossInputs,
    eqrm_quantile: float = 0.75,
    eqrm_burnin_iters: float = 2500,
    eqrm_lr: float = 1e-6,
    steps_of: float = DOMAINBED_STEPS,
) -> jax.Array:
    """``mean_e R_e`` during the burn-in, then :func:`kde_quantile` of the risks (module doc).

    ``eqrm_lr`` is read by the step, not here: the optimiser restarts with it at the burn-in."""
    _check(eqrm_quantile, eqrm_burnin_iters, eqrm_lr, steps_of)
    views = labelled_views(inputs, "eqrm")
    if len(views) < 2:
        raise LossError(f"eqrm needs at least 2 training environments (source='env_a,env_b,...'), got {len(views)}")
    risks = environment_risks(views)
    after = anneal_weight(inputs.progress, 1.0, eqrm_burnin_iters, 0.0, steps_of) > 0
    return jnp.where(after, kde_quantile(risks, float(eqrm_quantile)), jnp.mean(risks))
