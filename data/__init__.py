"""Datasets: text corpora, image sets, MNIST's idx files, continual-learning task sequences.

``DEFAULT_DATA_DIR`` is where ``--data_dir`` points when it is not given: a folder ``datasets`` in the
working directory, outside the source packages (this package is ``data/``; a download must never land
among its modules). Only there are missing datasets downloaded without being asked for by name.
"""

DEFAULT_DATA_DIR = "datasets"
