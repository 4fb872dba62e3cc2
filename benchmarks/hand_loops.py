"""Minimal hand-written PyTorch versions of each experiment's step, for ``bench_parity.py``.

Each is what someone would write from the paper without this project: plain ``nn`` modules, a loop,
``loss.backward()``, ``optimizer.step()``. Same sizes, same arithmetic per step as the project's code;
none of its extras (dropouts, the output batch norm, guards, hooks, logging). They are baselines for
timing only: nothing else imports them.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.rnn_arch import RNNArch

ACTS = {"tanh": torch.tanh, "ReLU": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}


class HandRNN(nn.Module):
    """The search's cell written out: node 0 from ``[x_t, h_{t-1}]``, node j from its parent, highway
    gates ``h = c * f(a) + (1 - c) * h_in``; the output the mean of the loose ends; tied decoder."""

    def __init__(self, ntokens: int, hid: int, num_blocks: int) -> None:
        super().__init__()
        self.hid = hid
        self.embed = nn.Embedding(ntokens, hid)
        self.w0 = nn.Linear(2 * hid, 2 * hid)
        self.edges = nn.ModuleDict({f"{i}_{j}": nn.Linear(hid, 2 * hid, bias=False)
                                    for j in range(1, num_blocks) for i in range(j)})
        self.decoder = nn.Linear(hid, ntokens)
        self.decoder.weight = self.embed.weight

    def forward(self, x: Tensor, h: Tensor, arch: RNNArch) -> tuple[Tensor, Tensor]:
        acts, parents = [ACTS[a] for a in arch.activations], (-1, *arch.parents)
        outputs = []
        for xt in self.embed(x):
            c, a = self.w0(torch.cat([xt, h], 1)).chunk(2, 1)
            c = torch.sigmoid(c)
            nodes = [c * acts[0](a) + (1 - c) * h]
            for j in range(1, len(acts)):
                h_in = nodes[parents[j]]
                c, a = self.edges[f"{parents[j]}_{j}"](h_in).chunk(2, 1)
                c = torch.sigmoid(c)
                nodes.append(c * acts[j](a) + (1 - c) * h_in)
            out = torch.stack([nodes[k] for k in arch.loose_ends]).mean(0)
            h = nodes[-1]
            outputs.append(out)
        return self.decoder(torch.stack(outputs)), h


def rnn_batch(model: HandRNN, optim: torch.optim.Optimizer, arch: RNNArch, x: Tensor, y: Tensor, h: Tensor,
              clip: float) -> Tensor:
    """One training batch of ``arch``: forward, cross-entropy, backward, clip, SGD step."""
    logits, h = model(x, h, arch)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    optim.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optim.step()
    return h.detach()


class HandController(nn.Module):
    """ENAS's policy: an LSTM cell, one linear head per decision, the chosen token embedded as the next input."""

    def __init__(self, sizes: Sequence[int], hid: int = 100, temperature: float = 5.0, tanh_c: float = 2.5) -> None:
        super().__init__()
        self.sizes, self.hid, self.temperature, self.tanh_c = list(sizes), hid, temperature, tanh_c
        self.lstm = nn.LSTMCell(hid, hid)
        self.heads = nn.ModuleList(nn.Linear(hid, n) for n in sizes)
        self.embeds = nn.ModuleList(nn.Embedding(n, hid) for n in sizes)

    def forward(self) -> tuple[list[int], Tensor, Tensor]:
        x = torch.zeros(1, self.hid)
        state = (x, x)
        tokens, logp_sum, entropy = [], x.new_zeros(()), x.new_zeros(())
        for t in range(len(self.sizes)):
            state = self.lstm(x, state)
            logp = F.log_softmax(self.tanh_c * torch.tanh(self.heads[t](state[0]) / self.temperature), -1)
            token = int(torch.multinomial(logp.exp(), 1))
            tokens.append(token)
            logp_sum = logp_sum + logp[0, token]
            entropy = entropy - (logp.exp() * logp).sum()
            x = self.embeds[t](torch.tensor([token]))
        return tokens, logp_sum, entropy


class ReinforceState:
    baseline: float | None = None


def reinforce_step(controller: HandController, optim: torch.optim.Optimizer, model: HandRNN, decode: object,
                   x: Tensor, y: Tensor, state: ReinforceState, reward_c: float = 80.0, decay: float = 0.95,
                   entropy_coeff: float = 1e-4, clip: float = 0.0) -> None:
    """Sample a cell, its reward ``c / ppl`` on one validation batch, the REINFORCE update with an EMA baseline."""
    tokens, logp, entropy = controller()
    arch = decode(tokens)  # type: ignore[operator]
    with torch.inference_mode():
        logits, _ = model(x, torch.zeros(x.size(1), model.hid), arch)
        ppl = math.exp(float(F.cross_entropy(logits.flatten(0, 1), y.flatten())))
    reward = reward_c / ppl + entropy_coeff * float(entropy.detach())
    state.baseline = reward if state.baseline is None else decay * state.baseline + (1 - decay) * reward
    loss = -logp * (reward - state.baseline)
    optim.zero_grad()
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(controller.parameters(), clip)
    optim.step()


def mlp_step(model: nn.Module, optim: torch.optim.Optimizer, x: Tensor, y: Tensor, importance: list[Tensor],
             anchor: list[Tensor], strength: float) -> None:
    """One continual-learning update: cross-entropy, backward, a quadratic penalty's gradient
    ``s * F * (theta - theta*)`` added to the trunk's gradients, Adam."""
    loss = F.cross_entropy(model(x), y)
    optim.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p, f, a in zip(list(model.parameters())[:len(importance)], importance, anchor):
            p.grad.add_(f * (p - a), alpha=strength)
    optim.step()


class HandNAO(nn.Module):
    """NAO's controller written out: pair-embedding LSTM encoder, MLP predictor, attention LSTM decoder."""

    def __init__(self, vocab: int, length: int, embed: int = 48, hid: int = 96, mlp_layers: int = 4, mlp_hid: int = 200) -> None:
        super().__init__()
        self.length = length
        self.enc_embed = nn.Embedding(vocab, embed)
        self.encoder = nn.LSTM(2 * embed, hid, batch_first=True)
        widths = [hid] + [mlp_hid] * mlp_layers
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.mlp_out = nn.Linear(mlp_hid, 1)
        self.dec_embed = nn.Embedding(vocab, hid)
        self.decoder = nn.LSTM(hid, hid, batch_first=True)
        self.mix = nn.Linear(2 * hid, hid)
        self.out = nn.Linear(hid, vocab)

    def encode(self, seqs: Tensor) -> tuple[Tensor, Tensor]:
        pairs = self.enc_embed(seqs).view(seqs.size(0), self.length // 2, -1)
        outputs = F.normalize(self.encoder(pairs)[0], dim=-1)
        return outputs, F.normalize(outputs.mean(1), dim=-1)

    def predict(self, emb: Tensor) -> Tensor:
        for layer in self.mlp:
            emb = torch.relu(layer(emb))
        return torch.sigmoid(self.mlp_out(emb)).squeeze(-1)

    def step(self, inputs: Tensor, state: tuple[Tensor, Tensor], context: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.decoder(self.dec_embed(inputs), state)
        attn = torch.softmax(out @ context.transpose(1, 2), -1)
        return self.out(torch.tanh(self.mix(torch.cat([attn @ context, out], -1)))), state

    def loss(self, seqs: Tensor, target: Tensor, w: float) -> Tensor:
        outputs, emb = self.encode(seqs)
        start = emb[None].contiguous()
        inputs = torch.cat([seqs.new_zeros(len(seqs), 1), seqs[:, :-1]], 1)
        logits, _ = self.step(inputs, (start, start), outputs)
        return w * F.mse_loss(self.predict(emb), target) + (1 - w) * F.cross_entropy(logits.flatten(0, 1), seqs.flatten())

    def move(self, seqs: Tensor, step: float, mask: Tensor) -> Tensor:
        outputs, emb = self.encode(seqs)
        grad = torch.autograd.grad(self.predict(emb).sum(), outputs)[0]
        with torch.no_grad():
            moved = F.normalize(outputs - step * grad, dim=-1)
            start = F.normalize(moved.mean(1), dim=-1)[None].contiguous()
            state, token, tokens = (start, start), seqs.new_zeros(len(seqs), 1), []
            for t in range(self.length):
                logits, state = self.step(token, state, moved)
                token = logits[:, 0].masked_fill(~mask[t], float("-inf")).argmax(-1, keepdim=True)
                tokens.append(token)
            return torch.cat(tokens, 1)


def nao_round(model: HandNAO, optim: torch.optim.Optimizer, seqs: Tensor, target: Tensor, batch: int, w: float,
              clip: float, top: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """One controller epoch over the pool (shuffled batches, Adam, clip) and one generation pass over ``top``."""
    model.train()
    for idx in torch.randperm(len(seqs), generator=generator).split(batch):
        loss = model.loss(seqs[idx], target[idx], w)
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optim.step()
    model.eval()
    return model.move(top, 1.0, mask)


class HandPathNet(nn.Module):
    """PathNet's modules as separate ``nn.Linear``s; a path sums its active modules' ReLU outputs per layer."""

    def __init__(self, inputs: int, layers: int, modules: int, units: int, classes: int) -> None:
        super().__init__()
        sizes = [inputs] + [units] * (layers - 1)
        self.layers = nn.ModuleList(nn.ModuleList(nn.Linear(n, units) for _ in range(modules)) for n in sizes)
        self.head = nn.Linear(units, classes)

    def forward(self, x: Tensor, path: Sequence[Sequence[int]]) -> Tensor:
        for layer, active in zip(self.layers, path):
            x = sum(torch.relu(layer[m](x)) for m in sorted(set(active)))  # type: ignore[assignment]
        return self.head(x)


def pathnet_generation(net: HandPathNet, optim: torch.optim.Optimizer, paths: list[list[list[int]]], x: Tensor,
                       y: Tensor, batches: int, batch: int, noise: float, low: float, high: float,
                       generator: torch.Generator, modules: int, rate: float) -> None:
    """One tournament: two paths each trained ``batches`` noisy minibatches (fitness: training accuracy);
    the loser replaced by the winner mutated."""
    i, j = torch.randperm(len(paths), generator=generator)[:2].tolist()
    fitness = []
    for k in (i, j):
        correct = 0
        for _ in range(batches):
            idx = torch.randint(len(y), (batch,), generator=generator)
            xb, yb = x[idx], y[idx]
            u = torch.rand(xb.shape, generator=generator)
            xb = xb.masked_fill(u < noise, low).masked_fill(u < noise / 2, high)
            logits = net(xb, paths[k])
            optim.zero_grad()
            F.cross_entropy(logits, yb).backward()
            optim.step()
            correct += int((logits.argmax(1) == yb).sum())
        fitness.append(correct)
    win, lose = (i, j) if fitness[0] >= fitness[1] else (j, i)
    flat = [m for layer in paths[win] for m in layer]
    hit = torch.rand(len(flat), generator=generator) < rate
    moved = [(m + int(torch.randint(-2, 3, ()))) % modules if h else m for m, h in zip(flat, hit.tolist())]
    n = len(paths[win][0])
    paths[lose] = [moved[r * n:(r + 1) * n] for r in range(len(paths[win]))]
