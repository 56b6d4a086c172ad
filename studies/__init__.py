"""ppgmm's studies: validation of EM against Bayesian baselines and impute-then-fit peers.

Run one with ``ppgmm study NAME [--quick] [--scheduler ADDRESS] [--out DIR]`` (or
``python -m studies NAME ...``) from a source checkout; see docs/studies/index.md.
"""
