"""NAO's controller: encoder, performance predictor and decoder (Luo et al. 2018, NAO-WS's defaults).

- **Encoder**: token embeddings; consecutive pairs concatenated (a sequence of ``L`` tokens is read in
  ``L / 2`` steps of ``2 * embed``); a one-layer LSTM; its outputs L2-normalised, mean-pooled and
  normalised again: the architecture's embedding.
- **Predictor**: an MLP (``mlp_layers`` x ``mlp_hid``, ReLU) on the embedding, a sigmoid output: the
  architecture's normalised validation loss in [0, 1], lower is better.
- **Decoder**: an LSTM started from the embedding (as both hidden and cell state), dot attention over
  the encoder's outputs mixed through ``tanh(W [context; output])``, logits over the vocabulary.
  Trained with teacher forcing; ``decode`` is greedy with the codec's mask, so only valid cells come out.

``move`` is NAO's generation step: the encoder's outputs moved against the predictor's gradient by
``step`` (``outputs - step * d pred / d outputs``), re-normalised and pooled, then decoded.
Sizes default to NAO-WS's RNN controller (embed 48, hidden 96, MLP 4 x 200); facts and sources are in
``docs/nao.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Encoded(NamedTuple):
    outputs: Tensor  # (batch, L/2, hid), normalised
    embedding: Tensor  # (batch, hid), normalised mean of the outputs
    predicted: Tensor  # (batch,), the predictor's value in (0, 1)


class NAOController(nn.Module):
    valid_mask: Tensor  # (length, vocab) booleans: the tokens decoding may emit at each position

    def __init__(self, vocab_size: int, length: int, valid_mask: Tensor, embed: int = 48, hid: int = 96,
                 mlp_layers: int = 4, mlp_hid: int = 200) -> None:
        super().__init__()
        if length % 2:
            raise ValueError(f"the encoder reads tokens in pairs; length {length} is odd")
        self.length = length
        self.register_buffer("valid_mask", valid_mask.clone(), persistent=False)
        self.enc_embed = nn.Embedding(vocab_size, embed)
        self.encoder = nn.LSTM(2 * embed, hid, batch_first=True)
        layers: list[nn.Module] = []
        width = hid
        for _ in range(mlp_layers):
            layers += [nn.Linear(width, mlp_hid), nn.ReLU()]
            width = mlp_hid
        self.predictor = nn.Sequential(*layers, nn.Linear(width, 1))
        self.dec_embed = nn.Embedding(vocab_size, hid)
        self.decoder = nn.LSTM(hid, hid, batch_first=True)
        self.attn_mix = nn.Linear(2 * hid, hid)
        self.out = nn.Linear(hid, vocab_size)

    # ---------------------------------------------------------------------------- encoder
    def pool(self, outputs: Tensor) -> Tensor:
        return F.normalize(outputs.mean(1), dim=-1)

    def predict(self, embedding: Tensor) -> Tensor:
        return torch.sigmoid(self.predictor(embedding)).squeeze(-1)

    def encode(self, seqs: Tensor) -> Encoded:
        b = seqs.size(0)
        pairs = self.enc_embed(seqs).view(b, self.length // 2, -1)
        outputs = F.normalize(self.encoder(pairs)[0], dim=-1)
        embedding = self.pool(outputs)
        return Encoded(outputs, embedding, self.predict(embedding))

    # ---------------------------------------------------------------------------- decoder
    def _step(self, inputs: Tensor, state: tuple[Tensor, Tensor], context: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.decoder(self.dec_embed(inputs), state)  # (b, t, hid)
        weights = torch.softmax(torch.bmm(out, context.transpose(1, 2)), dim=-1)
        mixed = torch.tanh(self.attn_mix(torch.cat([torch.bmm(weights, context), out], dim=-1)))
        return self.out(mixed), state

    @staticmethod
    def _start(embedding: Tensor) -> tuple[Tensor, Tensor]:
        h = embedding.unsqueeze(0).contiguous()
        return h, h.clone()

    def decoder_logits(self, seqs: Tensor, enc: Encoded) -> Tensor:
        """Teacher-forced logits ``(batch, L, vocab)`` for target ``seqs``: the input is SOS then ``seqs[:, :-1]``."""
        inputs = torch.cat([seqs.new_zeros(seqs.size(0), 1), seqs[:, :-1]], dim=1)
        logits, _ = self._step(inputs, self._start(enc.embedding), enc.outputs)
        return logits

    @torch.no_grad()
    def decode(self, outputs: Tensor, embedding: Tensor) -> Tensor:
        """Greedy constrained decoding: ``(batch, L)`` tokens, each valid at its position."""
        state = self._start(embedding)
        token = outputs.new_zeros(outputs.size(0), 1, dtype=torch.long)
        tokens = []
        for t in range(self.length):
            logits, state = self._step(token, state, outputs)
            logits = logits[:, 0].masked_fill(~self.valid_mask[t], float("-inf"))
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
        return torch.cat(tokens, dim=1)

    # ----------------------------------------------------------------------- training, moves
    def loss(self, seqs: Tensor, target: Tensor, mse_weight: float) -> tuple[Tensor, Tensor, Tensor]:
        """``mse_weight * MSE(predictor, target) + (1 - mse_weight) * NLL(decoder)``, and its two terms."""
        enc = self.encode(seqs)
        mse = F.mse_loss(enc.predicted, target)
        logits = self.decoder_logits(seqs, enc)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), seqs.reshape(-1))
        return mse_weight * mse + (1 - mse_weight) * nll, mse, nll

    def move(self, seqs: Tensor, step: float) -> Tensor:
        """NAO's generation: the decoded cells after moving the encoder's outputs ``step`` against the
        predictor's gradient (towards a lower predicted loss)."""
        with torch.enable_grad():
            enc = self.encode(seqs)
            grad = torch.autograd.grad(enc.predicted.sum(), enc.outputs)[0]
        moved = F.normalize(enc.outputs.detach() - step * grad, dim=-1)
        return self.decode(moved, self.pool(moved))
