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


def test_row_buffer_keeps_every_row_in_order_across_blocks():
    from torchrec_aes.train.metrics import RowBuffer

    buffer = RowBuffer(2, max_block_rows=8192)
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(2, n, generator=g) for n in (1, 4095, 3000, 7000, 9000, 5)]
    for p in parts:
        buffer.append(p)
    assert len(buffer) == sum(p.shape[1] for p in parts)
    assert torch.equal(buffer.tensor(), torch.cat(parts, dim=1))
    assert [b.shape[1] for b in buffer.blocks] == [4096, 8192, 8192, 8192]  # doubling, then capped
    assert RowBuffer(2).tensor().shape == (2, 0)


def test_scores_are_the_updates_logits_and_labels():
    env = init_distributed()
    metrics = BinaryMetrics(env.world_size, env.rank, 100, env.device)
    logits, labels = torch.randn(250), (torch.arange(250) % 3 == 0).float()
    for sl in (slice(0, 100), slice(100, 200), slice(200, 250)):
        metrics.update(logits[sl], labels[sl])
    assert torch.equal(metrics.scores(), torch.stack([logits, labels]))
    assert math.isclose(metrics.compute()["auc"], roc_auc_score(labels.numpy(), logits.numpy()), abs_tol=1e-4)


def test_limit_test_batches_evaluates_only_the_first_batches(tmp_path):
    import glob

    import numpy as np

    from torchrec_aes.config import load_config
    from torchrec_aes.runs import run_train

    run = tmp_path / "run"
    overrides = [f"run_dir={run}", "train.epochs=1", "train.checkpoint=false", "train.eval_batch_size=64"]
    run_train(load_config("configs/tests/tiny.yaml", [*overrides, "train.limit_test_batches=3"]))
    (scores,) = glob.glob(str(run / "scores" / "*.npy"))
    assert np.load(scores).shape == (2, 3 * 64)
    run_train(load_config("configs/tests/tiny.yaml", [*overrides, f"run_dir={tmp_path / 'all'}"]))
    (scores,) = glob.glob(str(tmp_path / "all" / "scores" / "*.npy"))
    assert np.load(scores).shape == (2, 600)  # 10% of 6000 rows
