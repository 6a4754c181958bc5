"""CTR evaluation: AUC and NE from `torchrec.metrics`, plus logloss, reduced over all ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.metrics_config import RecComputeMode
from torchrec.metrics.ne import NEMetric
from torchrec.metrics.rec_metric import RecTaskInfo


class RowBuffer:
    """Columns of per-row values gathered batch by batch into a few large blocks.

    Keeping one small tensor per batch (TorchRec's AUC state does) interleaves long-lived small
    allocations with each batch's large transient ones, so the allocator can neither reuse nor return the
    freed space: evaluating 1.6M rows grew the resident set by ~370 MB (`tools/bench_stream.py`, 16M rows)
    for 19 MB of values kept. Blocks double from 4096 rows up to `max_block_rows`.

    Args:
        width: values per row.
        max_block_rows: largest block.
    """

    def __init__(self, width: int, max_block_rows: int = 1 << 20) -> None:
        self.width, self.max_block_rows = width, max_block_rows
        self.blocks: list[torch.Tensor] = []
        self.used = 0  # rows filled in the last block

    def __len__(self) -> int:
        return sum(b.shape[1] for b in self.blocks[:-1]) + self.used

    def append(self, values: torch.Tensor) -> None:
        """values: [width, B]."""
        done, n = 0, values.shape[1]
        while done < n:
            if not self.blocks or self.used == self.blocks[-1].shape[1]:
                rows = min(self.max_block_rows, 4096 << len(self.blocks))
                self.blocks.append(torch.empty(self.width, rows, dtype=values.dtype, device=values.device))
                self.used = 0
            take = min(n - done, self.blocks[-1].shape[1] - self.used)
            self.blocks[-1][:, self.used : self.used + take] = values[:, done : done + take]
            self.used, done = self.used + take, done + take

    def tensor(self) -> torch.Tensor:
        """[width, rows appended]."""
        if not self.blocks:
            return torch.zeros(self.width, 0)
        return torch.cat([*self.blocks[:-1], self.blocks[-1][:, : self.used]], dim=1)


class BinaryMetrics:
    """Accumulates logits and labels over an evaluation pass and computes global metrics.

    AUC and NE come from TorchRec's metric modules (which sync across ranks); logloss is the
    example-weighted mean BCE all-reduced over ranks. Logits and labels are kept in a `RowBuffer` and
    given to TorchRec's AUC and NE in one update at `compute` (both keep per-update state; `scores`
    returns the rows).

    Args:
        world_size: number of ranks.
        rank: this rank.
        batch_size: nominal batch size (TorchRec's metric window bookkeeping).
        device: device of the accumulated tensors.
    """

    def __init__(self, world_size: int, rank: int, batch_size: int, device: torch.device) -> None:
        task = RecTaskInfo(name="ctr", label_name="label", prediction_name="prediction", weight_name="weight")
        kwargs = dict(
            world_size=world_size,
            my_rank=rank,
            batch_size=batch_size,
            tasks=[task],
            compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION,
            window_size=2**31 - 1,
            compute_on_all_ranks=True,
        )
        self.auc = AUCMetric(**kwargs).to(device)
        self.ne = NEMetric(**kwargs).to(device)
        self.device = device
        self.loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [sum BCE, count]
        self.rows = RowBuffer(2)  # logits, labels

    def scores(self) -> torch.Tensor:
        """[2, rows]: this rank's logits and labels so far, in update order."""
        return self.rows.tensor()

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits [B], labels [B]."""
        labels = labels.float()
        self.rows.append(torch.stack([logits.float().reshape(-1), labels.reshape(-1)]))
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")
        self.loss_sum += torch.stack([bce.double(), torch.tensor(float(labels.numel()), device=self.device)])

    def compute(self) -> dict[str, float]:
        """{"auc", "logloss", "ne"} over all ranks' updates."""
        totals = self.loss_sum.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        logloss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        if len(self.rows):
            logits, labels = self.rows.tensor()
            preds, weights = torch.sigmoid(logits), torch.ones_like(labels)
            for m in (self.auc, self.ne):
                m.update(predictions={"ctr": preds}, labels={"ctr": labels}, weights={"ctr": weights})
        auc = _lifetime(self.auc.compute(), "auc")
        ne = _lifetime(self.ne.compute(), "ne")
        return {"auc": auc, "logloss": logloss, "ne": ne}


def _lifetime(values: dict[str, torch.Tensor], name: str) -> float:
    """The metric over the whole pass: TorchRec's AUC reports only a window, which `window_size` makes
    cover every update."""
    for suffix in (f"lifetime_{name}", f"window_{name}"):
        for key, v in values.items():
            if key.endswith(suffix):
                return float(v)
    raise KeyError(f"no {name} in {sorted(values)}")
