"""BET's DeepSets fitness predictor and its training schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchrec_aes.data.interactions import InteractionData


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class FitnessPredictor(nn.Module):
    """DeepSets regressor of an action's fitness (BET's predictor).

    Entity encoder 1 -> 16 -> 16 on each row's normalised frequency; for each size d present in the
    action, the mean encoding of the rows of size d, concatenated with d / d_max, goes through
    17 -> 64 -> 64; the action embedding is the mean over sizes; the decoder 64 -> 64 -> 1 gives the
    fitness. LeakyReLU throughout.

    Args:
        freq: [N] normalised frequency of every row (users then items, each divided by its side's max).
        max_dim: d_max.
        multiple: size quantum (sizes are grouped per quantum count).
    """

    def __init__(self, freq: torch.Tensor, max_dim: int, multiple: int) -> None:
        super().__init__()
        self.register_buffer("freq", freq.float().reshape(-1, 1), persistent=False)
        self.max_dim, self.multiple = max_dim, multiple
        self.num_sizes = max_dim // multiple
        self.encoder = _mlp([1, 16, 16], last_activation=True)
        self.size_net = _mlp([17, 64, 64], last_activation=True)
        self.decoder = _mlp([64, 64, 1], last_activation=False)

    def embed(self, dims: torch.Tensor) -> torch.Tensor:
        """Action embeddings: dims [A, N] (row sizes, users then items) -> [A, 64]."""
        enc = self.encoder(self.freq)  # [N, 16]
        sizes = (torch.arange(1, self.num_sizes + 1, dtype=torch.float32) * self.multiple / self.max_dim)[
            :, None
        ]
        out = []
        for row in dims:
            idx = torch.div(row, self.multiple, rounding_mode="floor") - 1  # [N] in [0, S)
            sums = torch.zeros(self.num_sizes, enc.shape[1]).index_add_(0, idx, enc)
            counts = torch.bincount(idx, minlength=self.num_sizes)
            present = counts > 0
            means = sums[present] / counts[present, None]
            h = self.size_net(torch.cat([means, sizes[present]], dim=1))  # [S', 64]
            out.append(h.mean(0))
        return torch.stack(out)

    def forward(self, dims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dims [A, N] -> (predicted fitness [A], embeddings [A, 64])."""
        emb = self.embed(dims)
        return self.decoder(emb).squeeze(1), emb


class PredictorTrainer:
    """Adam on MSE, one sample per step, lr decaying by `decay` per step down to `min_lr` (BET's schedule)."""

    def __init__(self, model: FitnessPredictor, lr: float, decay: float, min_lr: float) -> None:
        self.model, self.decay, self.min_lr = model, decay, min_lr
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def update(self, dims: torch.Tensor, fitness: float) -> float:
        """One step on one action dims [N] with target `fitness`; returns the loss before the step."""
        pred, _ = self.model(dims[None])
        loss = (pred[0] - fitness) ** 2
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for group in self.opt.param_groups:
            group["lr"] = max(group["lr"] * self.decay, self.min_lr)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def normalised_frequency(data: InteractionData) -> torch.Tensor:
    """[U + I] training frequency of users then items, each side divided by its maximum."""
    user = data.user_freq.double() / max(int(data.user_freq.max()), 1)
    item = data.item_freq.double() / max(int(data.item_freq.max()), 1)
    return torch.cat([user, item]).float()
