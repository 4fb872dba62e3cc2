"""The ENAS controller: an LSTM policy that emits one token per architectural decision.

The controller knows nothing about the search space beyond ``decision_sizes``: the number of
choices of each decision in order. Decision ``t`` has its own linear head; the chosen token is
embedded (one table with an offset per decision) and fed to the next step, and the LSTM state is
carried across decisions. The search space turns a token sequence into an architecture.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Sample(NamedTuple):
    tokens: Tensor  # (batch, decisions) int64
    log_probs: Tensor  # (batch, decisions): log-probability of each chosen token
    entropies: Tensor  # (batch, decisions): entropy of each decision's distribution


class Controller(nn.Module):
    def __init__(
        self,
        decision_sizes: Sequence[int],
        hidden: int = 100,
        temperature: float = 5.0,
        tanh_c: float = 2.5,
    ) -> None:
        super().__init__()
        if not decision_sizes or min(decision_sizes) < 1:
            raise ValueError(f"bad decision sizes {list(decision_sizes)}")
        self.decision_sizes = list(decision_sizes)
        self.temperature = temperature
        self.tanh_c = tanh_c
        self.hidden = hidden
        offsets = torch.tensor([0, *self.decision_sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embed = nn.Embedding(sum(self.decision_sizes), hidden)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.decision_sizes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def _logits(self, h: Tensor, t: int) -> Tensor:
        logits = self.heads[t](h) / self.temperature
        if self.training:
            logits = self.tanh_c * torch.tanh(logits)
        return logits

    def forward(self, batch_size: int = 1, tokens: Tensor | None = None, generator: torch.Generator | None = None) -> Sample:
        """Sample ``batch_size`` token sequences, or score the given ``tokens`` (teacher forcing).

        One code path serves both, so the log-probabilities used by REINFORCE are exactly those of
        the distribution that produced the sample.
        """
        if tokens is not None:
            batch_size = tokens.size(0)
        device = self.offsets.device
        x = torch.zeros(batch_size, self.hidden, device=device)
        state = (torch.zeros_like(x), torch.zeros_like(x))
        chosen, log_probs, entropies = [], [], []
        for t in range(len(self.decision_sizes)):
            state = self.lstm(x, state)
            logp = F.log_softmax(self._logits(state[0], t), dim=-1)
            probs = logp.exp()
            if tokens is None:
                action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                action = tokens[:, t].to(device)
            chosen.append(action)
            log_probs.append(logp.gather(1, action[:, None]).squeeze(1))
            entropies.append(-(probs * logp).sum(-1))
            x = self.embed(action + self.offsets[t])
        return Sample(torch.stack(chosen, 1), torch.stack(log_probs, 1), torch.stack(entropies, 1))
