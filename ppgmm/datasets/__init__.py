"""Data sets shipped with ppgmm."""

from __future__ import annotations

from importlib.resources import files

import pandas as pd

__all__ = ["load_airquality", "AIRQUALITY_MEASUREMENTS"]

#: the four measurement columns of airquality (Month and Day are calendar fields)
AIRQUALITY_MEASUREMENTS = ["Ozone", "Solar.R", "Wind", "Temp"]


def load_airquality(measurements_only: bool = True) -> pd.DataFrame:
    """Daily air quality in New York, May to September 1973 (R's ``airquality``), 153 rows.

    Ozone (ppb) has 37 missing values and Solar.R (langleys) 7; Wind (mph) and Temp
    (degrees F) are complete. Source: New York State Department of Conservation (ozone)
    and the National Weather Service (meteorology), via R's ``datasets`` package
    (Chambers, Cleveland, Kleiner & Tukey 1983). Public domain.

    Parameters
    ----------
    measurements_only : bool, default True
        Keep the four measurement columns; False also returns Month and Day.
    """
    with files(__name__).joinpath("airquality.csv").open("r") as fh:
        df = pd.read_csv(fh)
    df.index = pd.RangeIndex(1, len(df) + 1, name="day_index")
    return df[AIRQUALITY_MEASUREMENTS] if measurements_only else df
