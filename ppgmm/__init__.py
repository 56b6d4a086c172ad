"""ppgmm: Gaussian mixtures on data with missing values, by EM, ADVI and NUTS from one spec."""

from .api import backend_options, fit
from .compare import Comparison, compare
from .data import MissingData, prepare
from .estimator import GaussianMixture
from .exceptions import ConvergenceWarning, DataError, PpgmmError, SpecError
from .fit import Fit, load
from .simulate import Truth, simulate
from .spec import GMM, Params, Prior

__version__ = "0.1.0"

__all__ = [
    "GMM", "Prior", "Params", "Fit", "MissingData",
    "GaussianMixture", "Truth",
    "fit", "backend_options", "load", "prepare", "simulate", "compare", "Comparison",
    "PpgmmError", "DataError", "SpecError", "ConvergenceWarning",
]
