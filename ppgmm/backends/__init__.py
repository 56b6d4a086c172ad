"""The backend registry: one line per backend.

Each entry names the module and function that fit a :class:`ppgmm.GMM` to a
:class:`ppgmm.MissingData` (``func(spec, md, *, seed, **options) -> Fit``) and the kind of
answer it gives, which is all that :func:`ppgmm.fit`, :func:`ppgmm.compare`, the report and
the command line need to know about it:

- ``"optimum"``: a point estimate (the EM's MLE or MAP; bootstrap draws optional);
- ``"mcmc"``: draws from the posterior by Markov chain Monte Carlo, judged by R-hat and ESS;
- ``"vi"``: draws from a variational approximation of the posterior.

A new backend costs its own module and one line here. Modules are imported only when a
backend is used, so PyMC loads with the first Bayesian fit.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["Backend", "BACKENDS", "KINDS", "get", "kind", "backend_options"]

KINDS = ("optimum", "mcmc", "vi")


@dataclass(frozen=True)
class Backend:
    """One entry of the registry."""

    module: str
    function: str
    kind: str
    description: str
    options_from: str | None = None  # function whose keyword-only parameters are the options

    def load(self) -> Any:
        """The backend function."""
        return getattr(importlib.import_module(self.module), self.function)

    def options(self) -> set[str]:
        """Keyword options the backend accepts."""
        impl = getattr(importlib.import_module(self.module), self.options_from or self.function)
        return {
            p.name for p in inspect.signature(impl).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ("seed", "warn")
        }


BACKENDS: dict[str, Backend] = {
    "em": Backend("ppgmm.backends.em", "em_backend", "optimum",
                  "EM, exact marginalisation of missing entries (MLE or MAP)", "fit_em"),
    "advi": Backend("ppgmm.backends.advi", "advi_backend", "vi",
                    "PyMC ADVI, mean-field or full-rank"),
    "nuts": Backend("ppgmm.backends.nuts", "nuts_backend", "mcmc", "PyMC NUTS"),
}


def get(name: str) -> Backend:
    """The registry entry of ``name``, or a SpecError listing the valid names."""
    from ..exceptions import SpecError

    if name not in BACKENDS:
        raise SpecError(f"backend should be one of {sorted(BACKENDS)}, but got {name!r}")
    return BACKENDS[name]


def kind(name: str) -> str:
    """The kind of answer backend ``name`` gives ("optimum", "mcmc", "vi"); "unknown" for a
    backend not registered here (e.g. a fit saved by a newer ppgmm)."""
    entry = BACKENDS.get(name)
    return entry.kind if entry is not None else "unknown"


def backend_options(name: str) -> set[str]:
    """Names of the keyword options ``ppgmm.fit`` accepts for backend ``name``."""
    return get(name).options()
