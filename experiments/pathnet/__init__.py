"""PathNet on binary MNIST (``--mode=pathnet``, docs/pathnet.md): evolved paths through one modular network.

tournament (the tournament genetic algorithm, its typed config, the tasks' noise), transfer (task A, then
B learned several ways on the same batches), run (the mode: seeds and pairs in a run directory, the
summary), options (its command-line options), measure (the two styles' speed-up over seeds, a ledger of
units), ablation (why paper-style transfer is slower than scratch, one change at a time).
"""
