"""The ground-truth ranking benchmark (``--mode=ranking``): does WPL make weight-sharing search rank cells better?

protocol (budgets, variants, units, the ground-truth file), run (the unit functions), report (tau,
regret, paired statistics, picture), main (the mode), options (its command-line options). docs/results.md
has the results and the answer.
"""
