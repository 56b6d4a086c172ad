r"""Per-column transforms of variables on a bounded support: the one home of their maths.

A variable that cannot be negative (a concentration, a length) or that lies between 0 and 1
(a proportion) is poorly described by normal components, whose imputations and predictive
draws then leave the support (airquality's Ozone imputed at -2.3). With ``transform=`` on
the spec (``ppgmm.GMM(2, transform={"Ozone": "log"})``) the mixture is fitted to
:math:`y = f(x)` column by column, and everything a user reads is mapped back:

- imputation and predictive draws: :math:`x = f^{-1}(y)` for every draw, exactly, so they
  lie inside the support (up to floating-point rounding);
- point imputations: the conditional mean on the original scale,
  :math:`E[x_j \mid x_{obs}] = \sum_k r_k\,E[f^{-1}(Y)]` with
  :math:`Y \sim N(\hat y_{kj}, c_{kj})` the entry's conditional normal under component k
  (:meth:`Transform.inverse_mean`); for ``"log"`` this is the closed form
  :math:`\sum_k r_k \exp(\hat y_{kj} + c_{kj}/2)`;
- the log-likelihood of a row: the change of variables
  :math:`\log p_X(x_{i,o}) = \log p_Y(f(x_{i,o})) + \sum_{j \in o_i} \log|f_j'(x_{ij})|`,
  so a fit on the log scale and a fit on the raw scale of the same data are compared on one
  footing (BIC, ``score``, LOO).

Parameters (weights, means, covariances) and the prior stay on the transformed scale. Every
:math:`f` here is increasing, so quantiles map back too: the p-quantile of :math:`x` is
:math:`f^{-1}` of the p-quantile of :math:`y`.

============  ===========  =====================  ==================  ======================
name          support      :math:`f(x)`           :math:`f^{-1}(y)`   :math:`\log|f'(x)|`
============  ===========  =====================  ==================  ======================
``"log"``     x > 0        :math:`\log x`         :math:`e^y`         :math:`-\log x`
``"logit"``   0 < x < 1    :math:`\log(x/(1-x))`  :math:`1/(1+e^{-y})`  :math:`-\log x - \log(1-x)`
============  ===========  =====================  ==================  ======================

``log1p`` (:math:`\log(1+x)` for counts with zeros) is deliberately absent: its inverse maps
the real line onto :math:`(-1, \infty)`, so imputations of a non-negative count could still
fall below 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit, ndtr

from .exceptions import DataError, SpecError

__all__ = ["Transform", "TRANSFORMS", "ColumnTransforms", "normalise_mapping",
           "suggest_transform"]

#: Gauss-Hermite nodes for E[f^-1(Y)] without a closed form (see Transform.inverse_mean)
GH_NODES = 100
#: the largest variance of Y for which that Gauss-Hermite rule is used
GH_MAX_VAR = 1.0
#: Gauss-Legendre nodes for wider Y (see Transform.inverse_mean)
GL_NODES = 200


@dataclass(frozen=True)
class Transform:
    """One invertible map :math:`f` from a variable's support onto the real line."""

    name: str
    support: str  # in words, for messages: "x > 0"
    lower: float  # the support is the open interval (lower, upper)
    upper: float

    def forward(self, x: Any) -> np.ndarray:
        """:math:`y = f(x)`; NaN stays NaN."""
        x = np.asarray(x, dtype=float)
        return np.log(x) if self.name == "log" else logit(x)

    def inverse(self, y: Any) -> np.ndarray:
        """:math:`x = f^{-1}(y)`; NaN stays NaN."""
        y = np.asarray(y, dtype=float)
        return np.exp(y) if self.name == "log" else expit(y)

    def inverse_derivative(self, y: Any) -> np.ndarray:
        r""":math:`(f^{-1})'(y)`: :math:`e^y` for ``"log"``, :math:`\sigma(y)\sigma(-y)` for
        ``"logit"``."""
        y = np.asarray(y, dtype=float)
        return np.exp(y) if self.name == "log" else expit(y) * expit(-y)

    def log_jacobian(self, x: Any) -> np.ndarray:
        r""":math:`\log|f'(x)|`, the log-density correction of one entry."""
        x = np.asarray(x, dtype=float)
        return -np.log(x) if self.name == "log" else -np.log(x) - np.log1p(-x)

    def contains(self, x: Any) -> np.ndarray:
        """Whether each value lies inside the support (False for NaN)."""
        x = np.asarray(x, dtype=float)
        return (x > self.lower) & (x < self.upper)

    def inverse_mean(self, m: Any, v: Any) -> np.ndarray:
        r""":math:`E[f^{-1}(Y)]` for :math:`Y \sim N(m, v)`, elementwise.

        ``"log"``: the log-normal mean :math:`\exp(m + v/2)`, exact. ``"logit"``: the
        logit-normal mean has no closed form. For :math:`v \le` :data:`GH_MAX_VAR` it is
        computed by Gauss-Hermite quadrature,
        :math:`\pi^{-1/2}\sum_q \omega_q f^{-1}(m + \sqrt{2v}\,t_q)` with
        :data:`GH_NODES` nodes (error below 1e-12). A wider normal sees :math:`f^{-1}` as a
        near step, where that rule loses accuracy (5e-9 at :math:`v = 10`, 1e-4 at
        :math:`v = 50`, 1e-2 at :math:`v = 400`); there the step is taken out exactly, with
        :math:`s = \sqrt v` and :math:`p` the density of :math:`Y`,

        .. math:: E[f^{-1}(Y)] = \Phi(m/s) + \int_0^\infty f^{-1}(-t)\,[p(-t) - p(t)]\,dt,

        and the remaining smooth integrand, below :math:`e^{-t}/s`, by Gauss-Legendre
        quadrature on :math:`[0, 40]` with :data:`GL_NODES` nodes (error below 1e-12).
        :math:`v = 0` gives :math:`f^{-1}(m)`.
        """
        m = np.asarray(m, dtype=float)
        v = np.maximum(np.asarray(v, dtype=float), 0.0)
        if self.name == "log":
            return np.exp(m + 0.5 * v)
        m, v = np.broadcast_arrays(m, v)
        out = np.zeros(m.shape)
        narrow = v <= GH_MAX_VAR
        t, w = np.polynomial.hermite.hermgauss(GH_NODES)
        mn, sd = m[narrow], np.sqrt(2.0 * v[narrow])
        acc = np.zeros(mn.shape)
        for tq, wq in zip(t, w, strict=True):
            acc += wq * expit(mn + sd * tq)
        out[narrow] = acc / np.sqrt(np.pi)
        if not narrow.all():
            mw, s = m[~narrow], np.sqrt(v[~narrow])
            t, w = np.polynomial.legendre.leggauss(GL_NODES)
            acc = ndtr(mw / s)
            for tq, wq in zip(20.0 * (t + 1.0), 20.0 * w, strict=True):
                gap = np.exp(-0.5 * ((tq + mw) / s) ** 2) - np.exp(-0.5 * ((tq - mw) / s) ** 2)
                acc += wq * expit(-tq) * gap / (s * np.sqrt(2.0 * np.pi))
            out[~narrow] = acc
        return out


#: the transforms ``transform=`` accepts, by name
TRANSFORMS: dict[str, Transform] = {
    "log": Transform("log", "x > 0", 0.0, np.inf),
    "logit": Transform("logit", "0 < x < 1", 0.0, 1.0),
}


def normalise_mapping(transform: Any) -> tuple[tuple[str | int, str], ...]:
    """``transform=`` of a spec as (column, name) pairs, or a SpecError saying what is wrong.

    Columns are names (str) or positions (non-negative int); names must be in
    :data:`TRANSFORMS`.
    """
    if transform is None:
        return ()
    if isinstance(transform, tuple | list) and all(
            isinstance(p, tuple | list) and len(p) == 2 for p in transform):
        transform = dict((k, v) for k, v in transform)
    if not isinstance(transform, Mapping):
        raise SpecError(
            f"transform should be a dict from column (name, or position for arrays) to a "
            f"transform name, e.g. {{'Ozone': 'log'}}, but got {type(transform).__name__}"
        )
    out: list[tuple[str | int, str]] = []
    for key, name in transform.items():
        if isinstance(key, np.integer):
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, str | int) or (
                isinstance(key, int) and key < 0):
            raise SpecError(f"transform keys should be column names or non-negative column "
                            f"positions, but got {key!r}")
        if name not in TRANSFORMS:
            raise SpecError(
                f"transform of column {key!r} should be one of {sorted(TRANSFORMS)}, but got "
                f"{name!r} (a log for positive values, a logit for values between 0 and 1)"
            )
        out.append((key, str(name)))
    return tuple(out)


@dataclass(frozen=True)
class ColumnTransforms:
    """The transform of each column of a data set (None where the column is left as is).

    Arrays passed to the methods have the features on their last axis (any leading axes);
    missing entries (NaN) stay missing.
    """

    by_column: tuple[Transform | None, ...]
    feature_names: tuple[str, ...]

    @classmethod
    def resolve(cls, transform: Any, feature_names: list[str]) -> ColumnTransforms | None:
        """Match a spec's ``transform`` to the columns; None when nothing is transformed.

        A str key is a feature name, an int key a column position (counting from 0). An
        int key that is also the label of a column at another position (a DataFrame with
        integer column labels in another order) is refused as ambiguous.

        Raises
        ------
        SpecError
            For a column that is not in the data, or one named twice.
        """
        pairs = normalise_mapping(transform)
        if not pairs:
            return None
        feats = [str(f) for f in feature_names]
        cols: list[Transform | None] = [None] * len(feats)
        for key, name in pairs:
            if isinstance(key, int):
                if key >= len(feats):
                    raise SpecError(f"transform names column position {key}, but the data "
                                    f"have {len(feats)} columns {feats}")
                if str(key) in feats and feats.index(str(key)) != key:
                    raise SpecError(
                        f"transform key {key} is ambiguous: it is a column position (column "
                        f"{feats[key]!r}), but a column is also labelled {key} (at position "
                        f"{feats.index(str(key))}); give the column's label as text, "
                        f"{{'{key}': ...}}, or rename the columns"
                    )
                j = key
            elif key in feats:
                j = feats.index(key)
            else:
                raise SpecError(f"transform names column {key!r}, which is not among the "
                                f"data's columns {feats}; use a column name (or, for an array, "
                                "a position such as 0)")
            if cols[j] is not None:
                raise SpecError(f"transform names column {feats[j]!r} twice")
            cols[j] = TRANSFORMS[name]
        return cls(tuple(cols), tuple(feats))

    @classmethod
    def from_json(cls, text: str, feature_names: list[str]) -> ColumnTransforms | None:
        """Inverse of :meth:`to_json` (the ``transform`` attr of a fit)."""
        return cls.resolve(json.loads(text), feature_names)

    def to_json(self) -> str:
        """{feature: transform name} as JSON."""
        return json.dumps(self.mapping())

    def mapping(self) -> dict[str, str]:
        """{feature: transform name} of the transformed columns."""
        return {f: t.name for f, t in zip(self.feature_names, self.by_column, strict=True)
                if t is not None}

    @property
    def is_transformed(self) -> np.ndarray:
        """Whether each column has a transform, (D,) bool."""
        return np.array([t is not None for t in self.by_column])

    def _apply(self, a: Any, method: str) -> np.ndarray:
        out = np.array(a, dtype=float, copy=True)
        for j, t in enumerate(self.by_column):
            if t is not None:
                out[..., j] = getattr(t, method)(out[..., j])
        return out

    def forward(self, x: Any) -> np.ndarray:
        """:math:`f_j(x_{\\cdot j})` on every transformed column."""
        return self._apply(x, "forward")

    def inverse(self, y: Any) -> np.ndarray:
        """:math:`f_j^{-1}(y_{\\cdot j})` on every transformed column."""
        return self._apply(y, "inverse")

    def inverse_entries(self, y: Any, cols: np.ndarray) -> np.ndarray:
        """:math:`f^{-1}` of entries whose column is ``cols`` (last axis of ``y``)."""
        out = np.array(y, dtype=float, copy=True)
        cols = np.asarray(cols)
        for j, t in enumerate(self.by_column):
            if t is not None:
                sel = cols == j
                out[..., sel] = t.inverse(out[..., sel])
        return out

    def log_jacobian(self, x: Any) -> np.ndarray:
        r""":math:`\sum_{j \in o_i} \log|f_j'(x_{ij})|` per row of ``x`` (n, d), NaN skipped:
        add it to a row's log-likelihood on the transformed scale to get the original's."""
        x = np.asarray(x, dtype=float)
        out = np.zeros(x.shape[:-1])
        for j, t in enumerate(self.by_column):
            if t is not None:
                col = x[..., j]
                seen = ~np.isnan(col)
                term = np.zeros(col.shape)
                term[seen] = t.log_jacobian(col[seen])
                out += term
        return out

    def inverse_mean(self, y_mean: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                     means: np.ndarray, variances: np.ndarray) -> np.ndarray:
        r"""Conditional means of missing entries on the original scale.

        ``y_mean`` (M,) holds the entries' conditional means on the transformed scale,
        ``cols`` (M,) their columns, and ``weights``, ``means``, ``variances`` (M, K) their
        predictive normal mixtures (:func:`ppgmm.numerics.patterns.missing_marginals`).
        Entries of a transformed column get :math:`\sum_k r_k E[f^{-1}(Y_k)]`; the others
        keep ``y_mean``.
        """
        out = np.array(y_mean, dtype=float, copy=True)
        for j, t in enumerate(self.by_column):
            if t is not None:
                sel = cols == j
                out[sel] = (weights[sel] * t.inverse_mean(means[sel], variances[sel])).sum(-1)
        return out

    def check_support(self, x: np.ndarray) -> None:
        """A DataError naming each column with observed values outside its support."""
        for j, t in enumerate(self.by_column):
            if t is None:
                continue
            col = x[:, j]
            bad = ~np.isnan(col) & ~t.contains(col)
            if bad.any():
                vals = np.unique(col[bad])[:3]
                shown = ", ".join(f"{v:.4g}" for v in vals)
                fix = ("shift the column first (e.g. x + 1 for counts with zeros) or mark "
                       "impossible values as missing (NaN)" if t.name == "log" else
                       "rescale the column into (0, 1) (e.g. a percentage / 100), pull exact "
                       "0s and 1s inside, or mark impossible values as missing (NaN)")
                raise DataError(
                    f"column {self.feature_names[j]!r} has {int(bad.sum())} observed value(s) "
                    f"outside the support of the {t.name} transform ({t.support}), such as "
                    f"{shown}: {fix}; or leave the column out of transform="
                )


def suggest_transform(observed: np.ndarray) -> str | None:
    """A transform that keeps a column's imputations inside its observed sign: "log" when
    every observed value is positive, else None (a proportion may want "logit"; only the
    user knows whether a positive column is bounded above)."""
    x = np.asarray(observed, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) and TRANSFORMS["log"].contains(x).all():
        return "log"
    return None
