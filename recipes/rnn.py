"""ENAS's final PTB training of a recurrent cell, with AWD-LSTM's variable BPTT and NT-ASGD.

SGD at a constant learning rate (ENAS: lr 20, batch 64, BPTT 35, clip 0.25, L2 5e-7), each batch a
slice of random length whose step is scaled by its length; once validation is worse than the best but
the last ``nonmono`` epochs, the weights are averaged over every later step (Merity et al. 2018) and
the average is what is validated, kept and tested.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from data.text import get_batch
from distributed import comm
from engine import scheduled_lr
from recipes.loop import Retrainer

log = logging.getLogger("wpl")


def nonmono_trigger(history: list[float], current: float, nonmono: int) -> bool:
    """NT-ASGD's switch (Merity et al. 2018): ``current`` is worse than the best validation score before
    the last ``nonmono`` epochs (lower is better; ``nonmono`` <= 0 never switches)."""
    return nonmono > 0 and len(history) > nonmono and current > min(history[:-nonmono])


def sample_seq_len(bptt: int) -> int:
    """AWD-LSTM's BPTT length: ``bptt`` (p = 0.95) or half of it, then ~N(that, 5), at least 5.

    Drawn from Python's ``random``, whose whole state a checkpoint holds (numpy's cached Gaussian is not
    saved by utils.rng_state, so ``np.random.normal`` would break resume equality)."""
    mean = bptt if random.random() < 0.95 else bptt / 2
    return max(5, int(random.normalvariate(mean, 5)))


class RNNRetrainer(Retrainer):
    """AWD-LSTM's training loop on the pruned recurrent cell; the search's AR/TAR options still apply."""

    default_epochs = 500  # AWD-LSTM on PTB

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model, data, bptt = self.model, self.space.train_data, self.cfg.bptt  # type: ignore[attr-defined]
        model.train()
        lr = scheduled_lr(self.spec, epoch, self.cfg.epochs)
        hidden = model.init_hidden(data.size(1))
        sums = torch.zeros(2, device=data.device)  # summed token cross-entropy, tokens
        pos = 0
        with tqdm(total=data.size(0) - 1, desc=f"retrain epoch {epoch}", leave=False, disable=None) as bar:
            while pos < data.size(0) - 2:
                seq_len = sample_seq_len(bptt)
                self.updater.set_lr(lr * seq_len / bptt)  # a longer slice is a larger step's worth of tokens
                x, y = get_batch(data, pos, seq_len)
                out = model(x, hidden, self.arch)
                hidden = out.hidden.detach()
                ce = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
                if self.update(ce + self.space.regularizers(out)):  # type: ignore[attr-defined]
                    sums += torch.stack([ce.detach() * y.numel(), ce.new_tensor(y.numel())])
                pos += seq_len
                bar.update(x.size(0))
        self.updater.set_lr(lr)
        comm.sum_(sums)  # every rank's tokens
        loss = float(sums[0] / sums[1].clamp_min(1))
        return {"train_loss": loss, "train_ppl": math.exp(min(loss, 50.0)), "lr": lr}

    def after_validation(self, score: float) -> dict[str, Any]:
        if self.averaged is None and nonmono_trigger(self.history, score, self.cfg.nonmono):
            log.info("validation stopped improving (%.4g after best %.4g): averaging the weights from now on (NT-ASGD)",
                     score, min(self.history[: -self.cfg.nonmono]))
            self.start_averaging()
        return {"averaging": self.averaged is not None}
