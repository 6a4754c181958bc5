import math

import torch
import torch.distributed as dist
from sklearn.metrics import log_loss, roc_auc_score

from torchrec_aes.train.distributed import init_distributed
from torchrec_aes.train.metrics import BinaryMetrics


def test_auc_logloss_and_ne_match_reference_formulas_over_several_updates():
    env = init_distributed()
    g = torch.Generator().manual_seed(0)
    labels = torch.bernoulli(torch.full((3000,), 0.3), generator=g)
    logits = 1.5 * (labels - 0.5) + torch.randn(3000, generator=g)
    metrics = BinaryMetrics(env.world_size, env.rank, 1000, env.device)
    for chunk in range(3):
        sl = slice(chunk * 1000, (chunk + 1) * 1000)
        metrics.update(logits[sl], labels[sl])
    got = metrics.compute()
    probs = torch.sigmoid(logits).numpy()
    assert math.isclose(got["auc"], roc_auc_score(labels.numpy(), probs), abs_tol=1e-4)
    assert math.isclose(got["logloss"], log_loss(labels.numpy(), probs), rel_tol=1e-4)
    p = labels.mean().item()
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert math.isclose(got["ne"], got["logloss"] / entropy, rel_tol=1e-3)
    assert dist.is_initialized()
