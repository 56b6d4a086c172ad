"""ppgmm: Gaussian mixtures on data with missing values, by EM, ADVI and NUTS from one spec."""

from .api import backend_options, fit
from .compare import Comparison, compare
from .data import MissingData, prepare
from .exceptions import ConvergenceWarning, DataError, PpgmmError, SpecError
from .fit import Fit, load
from .simulate import Truth, simulate
from .spec import GMM, Params, Prior

__version__ = "0.1.0"


def __getattr__(name: str):
    # the scikit-learn estimator imports scikit-learn, which ppgmm itself does not need
    if name == "GaussianMixture":
        try:
            from .estimator import GaussianMixture
        except ImportError as err:
            if getattr(err, "name", None) is None or not str(err.name).startswith("sklearn"):
                raise
            raise ImportError(
                "ppgmm.GaussianMixture is a scikit-learn estimator and needs scikit-learn: "
                "pip install scikit-learn (ppgmm.fit needs no scikit-learn)"
            ) from err
        return GaussianMixture
    raise AttributeError(f"module 'ppgmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"GaussianMixture"})

__all__ = [
    "GMM", "Prior", "Params", "Fit", "MissingData",
    "GaussianMixture", "Truth",
    "fit", "backend_options", "load", "prepare", "simulate", "compare", "Comparison",
    "PpgmmError", "DataError", "SpecError", "ConvergenceWarning",
]
