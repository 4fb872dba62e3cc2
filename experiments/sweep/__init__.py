"""Strength sweeps on Optuna: ``protocol`` (settings, grid/narrowing/TPE strategies), ``study`` (the shared
Optuna study, claims), ``evaluate`` (one run per setting and seed), ``run`` (the sweep from its options), ``report``."""
