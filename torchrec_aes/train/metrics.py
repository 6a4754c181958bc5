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


class BinaryMetrics:
    """Accumulates logits and labels over an evaluation pass and computes global metrics.

    AUC and NE come from TorchRec's metric modules (which sync across ranks); logloss is the
    example-weighted mean BCE all-reduced over ranks.

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

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits [B], labels [B]."""
        preds = torch.sigmoid(logits.float())
        labels = labels.float()
        weights = torch.ones_like(labels)
        for m in (self.auc, self.ne):
            m.update(predictions={"ctr": preds}, labels={"ctr": labels}, weights={"ctr": weights})
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")
        self.loss_sum += torch.stack([bce.double(), torch.tensor(float(labels.numel()), device=self.device)])

    def compute(self) -> dict[str, float]:
        """{"auc", "logloss", "ne"} over all ranks' updates."""
        totals = self.loss_sum.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        logloss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
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
