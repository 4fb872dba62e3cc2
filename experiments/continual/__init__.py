"""Task sequences (``--mode=continual``, docs/continual.md): fine-tuning, joint training and importance regularisers.

run (the loop: every strategy from the same weights on the same batches, its typed config), report (a
run's metrics from accuracy matrices and curves, summaries over seeds, table, figure), main (the mode:
its run directory, checkpoints and resume), options (its command-line options), protocol (a published
split-MNIST protocol as ledger units, ``python -m experiments.continual.protocol``), published (that
protocol's report beside the published figures).
"""
