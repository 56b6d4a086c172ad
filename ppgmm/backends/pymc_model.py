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
  :math:`r^T S_{pk}^{-1} r = r_o^T \Sigma_{k,oo}^{-1} r_o`. A Cholesky factorisation over
  (P, K) (:func:`_cholesky`) and one gathered triangular product over rows give

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
    "ROW_NAMES",
    "padding_row",
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


# The batched factorisations below are written out column by column in elementwise
# operations instead of calling pt.linalg.cholesky / solve_triangular. On the CPU, jaxlib
# 0.10 runs a large batch of a LAPACK kernel (P x K pattern factors of D x D, when the
# batch holds more than about 3e4 entries, P K D^2) on its intra-op thread pool and blocks
# a pool thread until the batch is done; when as many log densities run at once as the
# pool has threads (nutpie's chains on a machine with as many cores as chains), every
# pool thread waits and the sampler hangs for ever. D column steps of elementwise work
# have no such call; they cost more than LAPACK (docs/bayesian.md has the timings).


def _cholesky(pt: Any, s: Any, d: int) -> Any:
    r"""Lower Cholesky factor of each (D, D) matrix of ``s`` (..., D, D), column by column:
    :math:`L_{ij} = (S_{ij} - \sum_{m<j} L_{im} L_{jm}) / L_{jj}` for :math:`i \ge j`, with
    :math:`L_{jj}` the square root of the :math:`i = j` numerator."""
    cols: list[Any] = []
    for j in range(d):
        v = s[..., j:, j]  # (..., D - j)
        if cols:
            done = pt.stack(cols, axis=-1)  # (..., D, j)
            v = v - pt.sum(done[..., j:, :] * done[..., j, None, :], axis=-1)
        col = v / pt.sqrt(v[..., 0, None])
        cols.append(pt.concatenate([pt.zeros_like(s[..., :j, j]), col], axis=-1))
    return pt.stack(cols, axis=-1)


def _tri_inverse(pt: Any, low: Any, d: int) -> Any:
    r"""Inverse of each lower-triangular (D, D) matrix of ``low`` (..., D, D), row by row by
    forward substitution: :math:`M_{i\cdot} = (e_i - \sum_{m<i} L_{im} M_{m\cdot}) / L_{ii}`."""
    eye = np.eye(d)
    rows: list[Any] = []
    for i in range(d):
        r = eye[i]
        if rows:
            r = r - pt.sum(low[..., i, :i, None] * pt.stack(rows, axis=-2), axis=-2)
        rows.append(r / low[..., i, i, None])
    return pt.stack(rows, axis=-2)


def _bartlett_cov(pt: Any, c: Any, z: Any, chol_scale: Any, batch: tuple, d: int) -> Any:
    """:math:`\\Sigma = (C A^{-T})(C A^{-T})^T` from Bartlett factors.

    ``c`` has shape (*batch, D), ``z`` (*batch, D(D-1)/2), ``chol_scale`` (D, D).
    """
    rows, cols = _tril_indices(d)
    a = pt.zeros((*batch, d, d))
    a = pt.set_subtensor(a[..., np.arange(d), np.arange(d)], pt.sqrt(c))
    a = pt.set_subtensor(a[..., rows, cols], z)
    a_inv = _tri_inverse(pt, a, d)  # A^-1, lower
    m = pt.matmul(chol_scale, pt.swapaxes(a_inv, -1, -2))  # C A^-T
    return pt.matmul(m, pt.swapaxes(m, -1, -2))


def row_inputs(x0: np.ndarray, row_pattern: np.ndarray, patterns: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The per-row arrays the likelihood reads (see :func:`mixture_loglik_rows`).

    ``x0`` (N, D): rows with missing entries set to 0; ``obs`` (N, D): observed masks as
    floats; ``pattern`` (N,): each row's pattern number (as a float, like every ``pm.Data``
    of the model); ``n_obs`` (N,): observed entries per row. O(N D) memory at any number
    of patterns.
    """
    obs = patterns.astype(float)[row_pattern]
    return {"x0": np.asarray(x0, float), "obs": obs,
            "pattern": np.asarray(row_pattern, float), "n_obs": obs.sum(1)}


#: at most this many patterns, rows select their pattern's terms by a one-hot product
#: (O(N K P D^2)); above it, by a gather (O(N K D^2), but its gradient is a scatter-add
#: about three times as costly as one pattern's product)
ONEHOT_PATTERNS = 3


def _whitening(pt: Any, patterns: np.ndarray, covs: Any) -> tuple[Any, Any]:
    """Per pattern and component: :math:`L_{pk}^{-1}` (P, K, D, D) and
    :math:`\\log|S_{pk}|` (P, K), with :math:`L_{pk}` the Cholesky factor of the embedded
    covariance :math:`S_{pk}`: P x K factorisations of D x D matrices, whatever N."""
    d = patterns.shape[1]
    chol = _cholesky(pt, embedded_covariance(patterns, covs), d)  # (P, K, D, D)
    logdet = 2.0 * pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)  # (P, K)
    return _tri_inverse(pt, chol, d), logdet


def mixture_loglik_rows(pt: Any, rows: dict[str, Any], patterns: np.ndarray,
                        weights: Any, means: Any, covs: Any) -> Any:
    r"""Observed-data log-likelihood of each row, shape (N,), as a PyTensor graph.

    ``rows`` holds :func:`row_inputs` (arrays or tensors of the same names: the model
    passes them as ``pm.Data`` so that a compiled log density takes the data as inputs),
    ``patterns`` (P, D) the observed masks.

    With residuals :math:`r_{ik}` zeroed on missing entries and :math:`L_{pk}` the Cholesky
    factor of the embedded covariance (:func:`_whitening`),
    :math:`q_{ik} = \lVert L_{p(i)k}^{-1} r_{ik} \rVert^2 = r_{ik,o}^T \Sigma_{k,oo}^{-1}
    r_{ik,o}` and :math:`\log|S_{p(i)k}| = \log|\Sigma_{k,oo}|`. A row picks its pattern's
    terms by a one-hot product when there are at most :data:`ONEHOT_PATTERNS` patterns
    and by a gather otherwise, so memory and work per evaluation are O(N K D^2) at any
    number of patterns (a one-hot (N, P) matrix is 8 GB at a million rows with 1,000
    patterns). A row with pattern number P (:func:`padding_row`) observes nothing and
    has log-likelihood exactly 0.
    """
    n_pat = len(patterns)
    resid = (rows["x0"][:, None, :] - means[None]) * rows["obs"][:, None, :]  # (N, K, D)
    if n_pat <= ONEHOT_PATTERNS:
        chol_inv, logdet = _whitening(pt, patterns, covs)
        # (N, P); a padding row's pattern, P, matches none
        onehot = pt.eq(rows["pattern"][:, None], np.arange(n_pat).astype(float))
        whitened = pt.matmul(resid[:, None, :, None, :],
                             pt.swapaxes(chol_inv, -1, -2)[None])[..., 0, :]  # (N, P, K, D)
        quad = pt.sum(pt.sum(whitened**2, axis=-1) * onehot[:, :, None], axis=1)
        logdet_rows = pt.dot(onehot, logdet)  # (N, K)
    else:
        # the patterns and, last, the empty one (S = I, log|S| = 0) for padding rows
        empty = np.zeros((1, patterns.shape[1]), dtype=bool)
        chol_inv, logdet = _whitening(pt, np.vstack([patterns, empty]), covs)
        pattern = pt.cast(rows["pattern"], "int64")
        whitened = pt.sum(chol_inv[pattern] * resid[:, :, None, :], axis=-1)  # (N, K, D)
        quad = pt.sum(whitened**2, axis=-1)
        logdet_rows = logdet[pattern]
    log_comp = pt.log(weights)[None] - 0.5 * (
        rows["n_obs"][:, None] * np.log(2 * np.pi) + logdet_rows + quad)
    return pt.logsumexp(log_comp, axis=1)


def padding_row(n_patterns: int) -> dict[str, float]:
    """The value of each :func:`row_inputs` array in a row that observes nothing: its
    likelihood is 1 (log-likelihood exactly 0), so it pads a block of rows to a fixed size."""
    return {"x0": 0.0, "obs": 0.0, "pattern": float(n_patterns), "n_obs": 0.0}


# --------------------------------------------------------------------------- the model

#: the model's per-row pm.Data (:func:`row_inputs`): a minibatch takes rows of each
ROW_NAMES = ("x0", "obs", "pattern", "n_obs")
#: the model's pm.Data: rows and the hyperparameters computed from data
DATA_NAMES = (*ROW_NAMES, "prior_mean", "prior_chol", "prior_ig_scale")


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
        (:data:`DATA_NAMES`); ``model.ppgmm_structure``, the tuple of everything else
        the graph depends on (with ``missing="latent"`` a digest of the data, which that
        graph holds as constants), and ``model.ppgmm_patterns``, the likelihood's patterns.
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
    if missing == "latent":
        # that graph holds the rows and the missing positions as constants
        import hashlib

        model.ppgmm_structure += (hashlib.sha256(md.zero_filled.tobytes()
                                                 + md.observed.tobytes()).hexdigest(),)
    # the likelihood's pattern table (its rows' ``pattern`` numbers index it)
    model.ppgmm_patterns = md.patterns if missing == "marginal" else np.ones((1, d), bool)
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
