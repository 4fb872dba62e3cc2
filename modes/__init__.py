"""What ``--mode`` runs: one module per family (search, retrain, continual, PathNet).

``builders`` turns the options into a search space, sampler, regulariser and trainer; the mode modules
open their run directory, run their loop and write their results. ``main.py`` only parses, dispatches
through :data:`MODES` and turns errors into one line.
"""
