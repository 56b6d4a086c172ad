"""The numerics floor: pure array functions every other part of ppgmm imports.

Arrays and the value types of :mod:`ppgmm.spec` and :mod:`ppgmm.data` in, arrays out: no
xarray, pandas, printing or warnings about users' options. One module per concept:

- :mod:`~ppgmm.numerics.densities`: Cholesky log-determinants, normal, inverse-Wishart and
  inverse-gamma log densities, the prior's log density, Gaussian overlaps;
- :mod:`~ppgmm.numerics.patterns`: the observed-block algebra of missingness patterns
  (embedded covariances, pattern factors, E-step, conditional moments and draws, per-draw
  derived quantities);
- :mod:`~ppgmm.numerics.em`: M-step (MLE and MAP), the EM loop, starting points, the
  one-component fit, covariance constraints;
- :mod:`~ppgmm.numerics.alignment`: KL cost, Hungarian alignment, permutations;
- :mod:`~ppgmm.numerics.scores`: L2 distance between mixtures, CRPS;
- :mod:`~ppgmm.numerics.diagnostics`: R-hat, ESS and mode checks of parameter draws.
"""
