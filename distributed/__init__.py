"""Data-parallel search and retraining on ``torch.distributed`` (docs/distributed.md).

* :mod:`distributed.context`: who this process is (rank, world size, device) from ``torchrun``'s
  environment variables, which :mod:`distributed.launch` also sets; the process group's start and end;
* :mod:`distributed.comm`: the few collectives the loops need (gradient bucket, sums, agreement checks),
  each a no-op in a single process;
* :mod:`distributed.launch`: ``--num_gpu=N`` with a plain ``python main.py`` starts N local workers.

With one process nothing here creates a process group or changes a value: the single-process path and
its outputs are those of the project before this package existed.
"""
