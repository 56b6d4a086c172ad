r"""The one PyMC model shared by the ADVI and NUTS backends.

The graph (``N`` rows, ``D`` features, ``K`` components, ``P`` missingness patterns):

- weights :math:`w \sim \mathrm{Dirichlet}(1, \dots, 1)`;
- covariances, by type (prior of Fraley & Raftery 2007, resolved by :mod:`ppgmm.prior`):

  - ``full``: :math:`\Sigma_k \sim IW(\nu, \Lambda)` through the Bartlett decomposition.
    With :math:`\Lambda = C C^T` (Cholesky) and a lower-triangular :math:`A_k` with
    :math:`A_{k,ii} = \sqrt{c_{ki}}`, :math:`c_{ki} \sim \chi^2_{\nu - i}` (:math:`i = 0..D-1`)
    and :math:`A_{k,ij} = z_{kij} \sim N(0, 1)` below the diagonal,
    :math:`\Sigma_k^{-1} = C^{-T} A_k A_k^T C^{-1} \sim W(\nu, \Lambda^{-1})`, so
    :math:`\Sigma_k = (C A_k^{-T})(C A_k^{-T})^T \sim IW(\nu, \Lambda)`;
  - ``tied``: one such :math:`\Sigma` for every component;
  - ``diag``: :math:`\sigma^2_{kj} \sim IG(\nu/2, s^2_j/2)` (one :math:`s^2` for every column, or
    one per column on the standardised scale); ``spherical``:
    :math:`\sigma^2_k \sim IG(\nu/2, s^2/2)`;

- means :math:`\mu_k \mid \Sigma_k \sim N(\mu_P, \Sigma_k / \kappa)` (centred: with
  :math:`\kappa = 0.01` the data, not the prior, fix the means);
- likelihood, missing entries marginalised exactly. For pattern :math:`p` with observed
  indicator :math:`o_p \in \{0,1\}^D`, the embedded covariance
  :math:`S_{pk} = (o_p o_p^T) \odot \Sigma_k + \mathrm{diag}(1 - o_p)`
  (:func:`ppgmm.numerics.patterns.embedded_covariance`, shared with the EM) equals
  :math:`\Sigma_{k,oo}` on the observed block and the identity on the missing block, so
  :math:`\log|S_{pk}| = \log|\Sigma_{k,oo}|` and, with residuals zeroed on missing entries,
  :math:`r^T S_{pk}^{-1} r = r_o^T \Sigma_{k,oo}^{-1} r_o`. One batched Cholesky over
  (P, K) and one gathered triangular product over rows give

  .. math:: \log p(x_{i,o}) = \log\sum_k w_k\,N(x_{i,o} \mid \mu_{k,o}, \Sigma_{k,oo}).

Sampling happens on (log c, z), log variances, the simplex-transformed weights and the
means. Those are drawn under their own densities, so no Jacobian of the map to
:math:`\Sigma` is ever needed by the sampler; the test suite checks the change of
variables against ``scipy.stats.invwishart``. No constraint is imposed through a
potential: every value of the free variables is a valid parameter set.

With ``missing="latent"`` the missing entries are free variables instead (flat prior),
and every row enters with its completed vector; integrating them out gives back the
marginalised likelihood.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..data import MissingData
from ..numerics.patterns import conditional_draws, e_step, embedded_covariance
from ..spec import GMM, Params, ResolvedPrior

__all__ = [
    "import_pymc",
    "build_model",
    "initial_values",
    "row_inputs",
    "DATA_NAMES",
    "mixture_loglik_rows",
    "FREE_NAMES",
]

#: free variable names of the model, per covariance type (besides ``weights``, ``means``)
FREE_NAMES = {
    "full": ("bartlett_c", "bartlett_z"),
    "tied": ("bartlett_c", "bartlett_z"),
    "diag": ("variances",),
    "spherical": ("variances",),
}


def import_pymc():
    """Import PyMC, silencing PyTensor's note that pip builds find no BLAS.

    ppgmm never runs PyTensor's C backend for sampling (see ``docs/bayesian.md``), so the
    note does not apply.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*could not link to a BLAS",
                                category=UserWarning)
        import pymc as pm
        import pytensor  # noqa: F401

        # accessing the BLAS flags is what raises the note; do it here, once
        pytensor.config.blas__ldflags  # noqa: B018
    return pm


# --------------------------------------------------------------------------- graph pieces


def _tril_indices(d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(d, -1)


def _bartlett_cov(pt: Any, c: Any, z: Any, chol_scale: Any, batch: tuple, d: int) -> Any:
    """:math:`\\Sigma = (C A^{-T})(C A^{-T})^T` from Bartlett factors.

    ``c`` has shape (*batch, D), ``z`` (*batch, D(D-1)/2), ``chol_scale`` (D, D).
    """
    rows, cols = _tril_indices(d)
    a = pt.zeros((*batch, d, d))
    a = pt.set_subtensor(a[..., np.arange(d), np.arange(d)], pt.sqrt(c))
    a = pt.set_subtensor(a[..., rows, cols], z)
    eye = np.broadcast_to(np.eye(d), (*batch, d, d))
    a_inv = pt.linalg.solve_triangular(a, eye, lower=True)  # A^-1, lower
    m = pt.matmul(chol_scale, pt.swapaxes(a_inv, -1, -2))  # C A^-T
    return pt.matmul(m, pt.swapaxes(m, -1, -2))


def row_inputs(x0: np.ndarray, row_pattern: np.ndarray, patterns: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The per-row arrays the likelihood reads (see :func:`mixture_loglik_rows`).

    ``x0`` (N, D): rows with missing entries set to 0; ``obs`` (N, D): observed masks as
    floats; ``onehot`` (N, P): each row's pattern; ``n_obs`` (N,): observed entries per row.
    """
    obs = patterns.astype(float)[row_pattern]
    return {"x0": np.asarray(x0, float), "obs": obs,
            "onehot": np.eye(len(patterns))[row_pattern], "n_obs": obs.sum(1)}


def mixture_loglik_rows(pt: Any, rows: dict[str, Any], patterns: np.ndarray,
                        weights: Any, means: Any, covs: Any) -> Any:
    """Observed-data log-likelihood of each row, shape (N,), as a PyTensor graph.

    ``rows`` holds :func:`row_inputs` (arrays or tensors of the same names: the model
    passes them as ``pm.Data`` so that a compiled log density takes the data as inputs),
    ``patterns`` (P, D) the observed masks.

    With :math:`S_{pk}^{-1}` the inverse of the embedded covariance (the inverse of
    :math:`\\Sigma_{k,oo}` on the observed block) and residuals :math:`r_{ik}` zeroed on missing
    entries, :math:`q_{ik} = \\langle r_{ik} r_{ik}^T, S_{p(i)k}^{-1} \\rangle_F`. Rows pick their
    pattern's factors through the one-hot matrix :math:`H` (N, P), so every step is
    a dense product: :math:`q = \\sum_p H_{ip} \\langle r_{ik} r_{ik}^T, S_{pk}^{-1}\\rangle` and
    :math:`\\log|S_{p(i)k}| = (H \\log|S|)_{ik}`. (Indexing the batched factors by row
    instead lets graph rewrites push the index inside the batched Cholesky, factorising
    per row; that is twice as slow.)
    """
    n_pat, d = patterns.shape
    chol = pt.linalg.cholesky(embedded_covariance(patterns, covs))  # (P, K, D, D)
    logdet = 2.0 * pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (P, K)
    eye = np.broadcast_to(np.eye(d), (n_pat, 1, d, d))
    chol_inv = pt.linalg.solve_triangular(chol, eye, lower=True)  # (P, K, D, D)
    s_inv = pt.matmul(pt.swapaxes(chol_inv, -1, -2), chol_inv)  # (P, K, D, D)
    k = s_inv.shape[1]
    x0, obs, onehot = rows["x0"], rows["obs"], rows["onehot"]
    resid = (x0[:, None, :] - means[None]) * obs[:, None, :]  # (N, K, D)
    outer = (resid[:, :, :, None] * resid[:, :, None, :]).reshape((x0.shape[0], k, d * d))
    quad_p = pt.einsum("nkx,pkx->nkp", outer, s_inv.reshape((n_pat, k, d * d)))
    quad = pt.sum(quad_p * onehot[:, None, :], axis=-1)  # (N, K)
    log_comp = (
        pt.log(weights)[None]
        - 0.5 * (rows["n_obs"][:, None] * np.log(2 * np.pi) + pt.dot(onehot, logdet) + quad)
    )
    return pt.logsumexp(log_comp, axis=1)


# --------------------------------------------------------------------------- the model

#: the model's pm.Data: rows (:func:`row_inputs`) and hyperparameters computed from data
DATA_NAMES = ("x0", "obs", "onehot", "n_obs", "prior_mean", "prior_chol", "prior_ig_scale")


def _data(pm: Any, name: str, value: Any, rows: bool = False) -> Any:
    """``pm.Data`` of static shape (graph rewrites then need no broadcast checks), except
    the number of rows when ``rows`` (a compiled density then takes minibatches)."""
    value = np.array(value, dtype=float)
    shape = (None, *value.shape[1:]) if rows else value.shape
    return pm.Data(name, value, shape=shape)



def build_model(spec: GMM, md: MissingData, rp: ResolvedPrior, *, missing: str = "marginal"):
    """Build the PyMC model of ``spec`` on ``md`` under the resolved prior ``rp``.

    Parameters
    ----------
    spec : GMM
    md : MissingData
    rp : ResolvedPrior
        From :func:`ppgmm.backends.bayes.resolve_bayes_prior`.
    missing : {"marginal", "latent"}, default "marginal"
        Marginalise missing entries exactly, or sample them as latent variables.

    Returns
    -------
    pymc.Model
        Free variables ``weights``, ``means`` and :data:`FREE_NAMES` (plus
        ``x_missing_latent`` when latent); deterministic ``covariances`` (K, D, D); the
        likelihood as the potential ``loglik``; the data as ``pm.Data``
        (:data:`DATA_NAMES`) and ``model.ppgmm_structure``, the tuple of everything else
        the graph depends on.
    """
    pm = import_pymc()
    import pytensor.tensor as pt

    k, d = spec.n_components, md.d
    cov_type = spec.covariance
    coords = {
        "component": np.arange(k),
        "feature": list(md.feature_names),
        "feature_": list(md.feature_names),
        "obs": np.arange(md.n),
    }
    nu = rp.dof
    with pm.Model(coords=coords) as model:
        # the data and the hyperparameters computed from them enter as pm.Data, so that a
        # log density compiled once takes them as inputs (ADVI's compile cache, minibatches)
        prior_mean = _data(pm, "prior_mean", rp.mean)
        weights = pm.Dirichlet("weights", a=np.ones(k), dims="component")
        if cov_type in ("full", "tied"):
            chol_scale = _data(pm, "prior_chol", np.linalg.cholesky(rp.scale))
            batch = (k,) if cov_type == "full" else ()
            # c_i ~ chi^2(nu - i) = Gamma(shape (nu - i)/2, rate 1/2). Hyperparameters go in
            # as float64 arrays: PyTensor stores an exactly representable Python float such
            # as 0.5 as float32, and log(0.5) in float32 is off by 2e-9
            shape_c = np.broadcast_to((nu - np.arange(d)) / 2.0, (*batch, d)).astype(float)
            c = pm.Gamma("bartlett_c", alpha=shape_c, beta=np.full((*batch, d), 0.5),
                         shape=(*batch, d))
            n_off = d * (d - 1) // 2
            z = pm.Normal("bartlett_z", np.zeros((*batch, n_off)), np.ones((*batch, n_off)),
                          shape=(*batch, n_off))
            sigma = _bartlett_cov(pt, c, z, chol_scale, batch, d)
            if cov_type == "tied":
                sigma = pt.broadcast_to(sigma, (k, d, d))
            covs = pm.Deterministic(
                "covariances", sigma, dims=("component", "feature", "feature_")
            )
            means = pm.MvNormal("means", mu=prior_mean, cov=covs / rp.kappa,
                                dims=("component", "feature"))
        else:
            shape = (k, d) if cov_type == "diag" else (k,)
            # diag may carry one scale per column (the standardised scale's prior, shape (D,))
            a = np.full(shape, nu / 2.0)
            b = _data(pm, "prior_ig_scale", np.broadcast_to(np.asarray(rp.scale, float) / 2.0,
                                                            shape))
            var = pm.InverseGamma("variances", alpha=a, beta=b, shape=shape)
            var_kd = var if cov_type == "diag" else pt.broadcast_to(var[:, None], (k, d))
            covs = pm.Deterministic(
                "covariances", var_kd[:, :, None] * np.eye(d),
                dims=("component", "feature", "feature_"),
            )
            means = pm.Normal("means", mu=prior_mean, sigma=pt.sqrt(var_kd / rp.kappa),
                              dims=("component", "feature"))
        if missing == "marginal":
            data = {name: _data(pm, name, value, rows=True) for name, value in row_inputs(
                md.zero_filled, md.pattern_index, md.patterns).items()}
            rows = mixture_loglik_rows(pt, data, md.patterns, weights, means, covs)
        elif missing == "latent":
            mr, mc = md.missing_index
            x_lat = pm.Flat("x_missing_latent", shape=(len(mr),))
            data = row_inputs(md.zero_filled, np.zeros(md.n, dtype=int),
                              np.ones((1, d), dtype=bool))
            data["x0"] = pt.set_subtensor(pt.as_tensor(md.zero_filled)[mr, mc], x_lat)
            rows = mixture_loglik_rows(pt, data, np.ones((1, d), dtype=bool), weights, means,
                                       covs)
        else:
            raise ValueError(f"missing should be 'marginal' or 'latent', but got {missing!r}")
        pm.Potential("loglik", rows.sum())
    # what a compiled log density depends on besides the pm.Data (ADVI's compile cache)
    model.ppgmm_structure = (k, d, cov_type, missing, md.patterns.tobytes(),
                             md.patterns.shape, float(nu), float(rp.kappa))
    return model


def initial_values(params: Params, rp: ResolvedPrior, covariance: str,
                   md: MissingData | None = None) -> dict[str, np.ndarray]:
    """Values of the model's free variables (constrained scale) that reproduce ``params``.

    The inverse of the Bartlett map: :math:`A A^T = C^T \\Sigma^{-1} C`, so :math:`A` is the
    Cholesky factor of :math:`C^T \\Sigma^{-1} C`, :math:`c = \\mathrm{diag}(A)^2` and
    :math:`z` its strict lower triangle. With ``md`` given, the latent missing entries start
    at their conditional means :math:`E[x_{mis} \\mid x_{obs}]` under ``params``.
    """
    w, mu, cov = (np.asarray(a, dtype=float) for a in params)
    out: dict[str, np.ndarray] = {"weights": w / w.sum(), "means": mu}
    d = mu.shape[1]
    if covariance in ("full", "tied"):
        chol_scale = np.linalg.cholesky(rp.scale)
        sig = cov if covariance == "full" else cov[:1]
        # C^T Sigma^-1 C = (L^-1 C)^T (L^-1 C), L = chol(Sigma)
        lc = np.linalg.solve(np.linalg.cholesky(sig), np.broadcast_to(chol_scale, sig.shape))
        a = np.linalg.cholesky(np.swapaxes(lc, -1, -2) @ lc)
        rows, cols = _tril_indices(d)
        c = np.diagonal(a, axis1=-2, axis2=-1) ** 2
        z = a[..., rows, cols]
        if covariance == "tied":
            c, z = c[0], z[0]
        out["bartlett_c"], out["bartlett_z"] = c, z
    else:
        var = np.diagonal(cov, axis1=-2, axis2=-1)
        out["variances"] = var if covariance == "diag" else var.mean(axis=1)
    if md is not None:
        p, layout = Params(w, mu, cov), md.layout
        mean, _ = conditional_draws(p, e_step(p, layout), layout, np.random.default_rng(0), 0)
        out["x_missing_latent"] = mean[md.missing_index]
    return out
