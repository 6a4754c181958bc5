"""The gated search model: per-sample Bernoulli gates over blocks of 4 embedding dims.

`GatedEmbeddingBagCollection` wraps the TorchRec EBC (every table at the base dim D, sharded as usual) the
way the elastic EBC does: the lookup runs first, then a small controller MLP maps the sample's pooled
embeddings (all fields concatenated, scaled to unit norm: only their direction) to a gate
logit per (field, block), bounded to (-b, b) by b tanh(raw / b) (`logit_bound`); pi = sigmoid(logit).
Fed the raw embeddings, the logits saturated within ~100 steps (pi = 1.0 exactly, or the bound), where
neither the task's gradient nor the sparsity term can move a gate any more (both pass through
pi (1 - pi)); the unit-norm input keeps them moving, the bound is a guard.

* Training: z ~ Bernoulli(pi) with a straight-through gradient (z + pi - stop_grad(pi)).
* Evaluation (and clustering): deterministic z = 1[pi >= 0.5].
* `prefix` gates keep the first k blocks, k the number of leading open gates (the mask is the cumulative
  product of z); `free` gates use z itself. A sample's dim of field f is 4 x the blocks kept.

`GateHooks` adds the regularisers to the training loss: lambda_s * kept + lambda_p mean(pi (1 - pi)),
where kept = sum_f w_f mean(keep_f) is the expected share of dims kept (keep = pi for free gates, the
cumulative product of pi for prefix gates). The field weights w_f are uniform by default, so a gate stays
open for its signal whatever its table's size (the bytes are met later, when the group dims are fitted
to the budget); `rows` weighs each field by its share of the table rows (a kept dim costs bytes in
proportion to its table), which closes large tables first whatever their signal. lambda_s is not a
constant to tune: it is a dual variable steered so that `kept` meets the target (the share of the full
model's bytes the budget allows), by `sparsity_lr` per step; `signed` (default) lets it go below 0, so
gates that closed past the target reopen, `nonnegative` stops it at 0 (the target is an upper bound).
The kept share and lambda_s at the end of every epoch are recorded (`epochs`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_aes.train.distributed import all_reduce_sum, init_distributed
from torchrec_aes.train.hooks import TrainHooks

BLOCK = 4
"""Dims per gate (FBGEMM's fused kernels need table dims that are multiples of 4)."""


class GatedEmbeddingBagCollection(nn.Module):
    """An EBC whose pooled embeddings are masked per sample by learned Bernoulli gates.

    Args:
        embedding_bag_collection: the tables, all at the same dim D (a multiple of 4).
        hidden: hidden units of the controller.
        gates: "prefix" or "free" (module docstring).
        gate_init: initial gate logit (|gate_init| < logit_bound).
        logit_bound: the logits' bound b.
    """

    def __init__(
        self,
        embedding_bag_collection: nn.Module,
        hidden: int,
        gates: str = "prefix",
        gate_init: float = 2.0,
        logit_bound: float = 4.0,
    ) -> None:
        super().__init__()
        self.ebc = embedding_bag_collection
        configs: list[EmbeddingBagConfig] = list(embedding_bag_collection.embedding_bag_configs())  # type: ignore[operator]
        dims = {c.embedding_dim for c in configs}
        if len(dims) != 1 or next(iter(dims)) % BLOCK:
            raise ValueError(
                f"gated EBC: tables must share one dim that is a multiple of {BLOCK}, got {dims}"
            )
        self._configs = configs
        self.dim = next(iter(dims))
        self.blocks = self.dim // BLOCK
        self.feature_names = [n for c in configs for n in c.feature_names]
        self.prefix = gates == "prefix"
        n = len(self.feature_names)
        if not abs(gate_init) < logit_bound:
            raise ValueError(
                f"gated EBC: gate_init {gate_init} must lie within (-{logit_bound}, {logit_bound})"
            )
        self.logit_bound = logit_bound
        self.controller = nn.Sequential(
            nn.Linear(n * self.dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n * self.blocks),
        )
        last = self.controller[2]
        assert isinstance(last, nn.Linear)
        nn.init.constant_(last.bias, logit_bound * math.atanh(gate_init / logit_bound))
        self.last_probs: torch.Tensor | None = None  # [B, F, blocks] of the last training forward
        self.last_keep: torch.Tensor | None = None  # [B, F, blocks] expected kept share of each block
        self.capture: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (masked, active dims) in eval

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)

    def gate_mask(self, probs: torch.Tensor) -> torch.Tensor:
        """[B, F, blocks] gate probabilities -> [B, F, blocks] block mask (sampled in training)."""
        if self.training:
            z = torch.bernoulli(probs.detach())
            z = z + probs - probs.detach()  # straight through
        else:
            z = (probs >= 0.5).to(probs.dtype)
        return torch.cumprod(z, dim=-1) if self.prefix else z

    def gate_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, D] pooled embeddings -> [B, F, blocks] gate probabilities pi."""
        batch, fields = x.shape[0], x.shape[1]
        # Unit-norm input: with thousands of inputs, Adam's per-weight steps add up coherently and a
        # raw input would move the logits by hundreds within a few dozen steps.
        direction = F.normalize(x.reshape(batch, -1), dim=1)
        bound = self.logit_bound
        logits = bound * torch.tanh(self.controller(direction) / bound)
        return torch.sigmoid(logits).view(batch, fields, self.blocks)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.ebc(features).to_dict()
        x = torch.stack([pooled[f] for f in self.feature_names], dim=1)  # [B, F, D]
        batch, fields = x.shape[0], x.shape[1]
        probs = self.gate_probs(x)
        blocks = self.gate_mask(probs)
        masked = x * blocks.repeat_interleave(BLOCK, dim=-1)  # [B, F, D]
        if self.training:
            self.last_probs = probs
            self.last_keep = torch.cumprod(probs, dim=-1) if self.prefix else probs
        elif self.capture is not None:
            self.capture.append((masked.reshape(batch, -1).detach(), blocks.detach().sum(-1) * BLOCK))
        return KeyedTensor(
            keys=list(self.feature_names),
            length_per_key=[self.dim] * fields,
            values=masked.reshape(batch, -1),
            key_dim=1,
        )


def find_gated(model: nn.Module) -> GatedEmbeddingBagCollection:
    """The (single) gated EBC inside `model` (also inside DMP)."""
    found = [m for m in model.modules() if isinstance(m, GatedEmbeddingBagCollection)]
    if len(found) != 1:
        raise ValueError(f"expected one GatedEmbeddingBagCollection in the model, found {len(found)}")
    return found[0]


def gate_regulariser(
    probs: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor, sparsity: float, polarization: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda_s * kept + lambda_p mean(pi (1 - pi)), kept): kept = sum_f w_f mean over samples and blocks of
    keep[:, f] (the expected share of bytes kept; `weights` [F] sum to 1)."""
    kept = (keep.mean(dim=(0, 2)) * weights).sum()
    return sparsity * kept + polarization * (probs * (1 - probs)).mean(), kept


class GateHooks(TrainHooks):
    """Builds the gated model, adds the gate regularisers to the loss and steers lambda_s to the target.

    Args:
        hidden, gates, gate_init, logit_bound: the controller (see `GatedEmbeddingBagCollection`).
        weights: [F] the fields' weights in the kept share (sum to 1).
        target: the kept share to reach (from the budget).
        sparsity_lr: step of the dual update of lambda_s.
        polarization: lambda_p.
        signed: lambda_s may go below 0 (module docstring).
    """

    def __init__(
        self,
        hidden: int,
        gates: str,
        gate_init: float,
        weights: list[float],
        target: float,
        sparsity_lr: float,
        polarization: float,
        signed: bool = True,
        logit_bound: float = 4.0,
    ):
        self.hidden, self.gates, self.gate_init = hidden, gates, gate_init
        self.logit_bound = logit_bound
        self.signed = signed
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.target, self.sparsity_lr, self.polarization = target, sparsity_lr, polarization
        self.sparsity = 0.0
        self.kept: torch.Tensor | None = None  # this rank's kept share in the last step
        self.epoch_kept: list[float] = [0.0, 0.0]  # sum and count of the all-reduced kept share this epoch
        self.epochs: list[dict[str, float]] = []  # per epoch: mean kept share, target, lambda_s at its end
        self.gated: GatedEmbeddingBagCollection | None = None

    def make_model(self, task: Any, ebc: Any) -> nn.Module:
        gated = GatedEmbeddingBagCollection(ebc, self.hidden, self.gates, self.gate_init, self.logit_bound)
        return task.model_around(gated)

    def on_model(self, dmp: Any) -> None:
        self.gated = find_gated(dmp)

    def extra_loss(self, batch: Any, outputs: torch.Tensor) -> torch.Tensor | None:
        gated = self.gated
        if gated is None or gated.last_probs is None or gated.last_keep is None:
            return None
        loss, kept = gate_regulariser(
            gated.last_probs,
            gated.last_keep,
            self.weights.to(gated.last_probs.device),
            self.sparsity,
            self.polarization,
        )
        self.kept = kept.detach()  # a tensor: the train pipeline traces this call symbolically
        return loss

    def after_step(self, step: int, loss: float) -> float:
        env = init_distributed()
        kept = float(self.kept) if self.kept is not None else self.target
        total_loss, total_kept = all_reduce_sum([loss / env.world_size, kept / env.world_size])
        # Dual ascent on lambda_s, identical on every rank (all-reduced kept share).
        self.sparsity += self.sparsity_lr * (total_kept - self.target)
        if not self.signed:
            self.sparsity = max(0.0, self.sparsity)
        self.epoch_kept = [self.epoch_kept[0] + total_kept, self.epoch_kept[1] + 1]
        self.kept = None
        return total_loss

    def validate(self, epoch: int) -> dict[str, float] | None:
        """At the end of every epoch: records its mean kept share and lambda_s (validation as usual)."""
        total, count = self.epoch_kept
        self.epochs.append(
            {"epoch": epoch, "kept": total / max(count, 1), "target": self.target, "sparsity": self.sparsity}
        )
        self.epoch_kept = [0.0, 0.0]
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "epoch_kept": self.epoch_kept, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sparsity = float(state.get("sparsity", 0.0))
        self.epoch_kept = [float(v) for v in state.get("epoch_kept", [0.0, 0.0])]
        self.epochs = list(state.get("epochs", []))
