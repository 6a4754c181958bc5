"""The trainer on 2 gloo ranks: one sharded step equals a single-process reference; fit() runs sharded."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from tests.distributed.launcher import run_ranks
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.dataset import make_batch
from torchrec_aes.models.ctr import build_ctr_model
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.trainer import Trainer

pytestmark = pytest.mark.distributed
DIMS = [8, 16, 4, 8, 12]


def _reference(model_type: str):
    """An unsharded model with fixed weights."""
    splits = tiny_splits()
    cfg = tiny_config(model_type)
    arch = Architecture.from_dims(splits.schema, DIMS)
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=arch.to_ebc_configs(), device=torch.device("cpu"))
    return cfg, splits, arch, build_ctr_model(model_type, ebc, splits.schema.num_dense, cfg.model)


def _copy_into(dmp_state: dict, full: dict) -> None:
    """Copies full (unsharded) tensors into the matching local shards of a DMP state dict."""
    for key, value in dmp_state.items():
        src = full["model." + key] if "model." + key in full else full[key]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                rows, cols = shard.metadata.shard_offsets
                h, w = shard.metadata.shard_sizes
                shard.tensor.copy_(src[rows : rows + h, cols : cols + w])
        else:
            value.copy_(src)


def _gather(dmp_state: dict) -> dict:
    out = {}
    for key, value in dmp_state.items():
        if isinstance(value, ShardedTensor):
            full = torch.zeros(value.size()) if torch.distributed.get_rank() == 0 else None
            value.gather(0, full)
            out[key] = full
        else:
            out[key] = value.detach().clone()
    return out


def _one_step(rank: int, world_size: int, model_type: str) -> dict:
    cfg, splits, arch, ref = _reference(model_type)
    cfg.train.embedding_optimizer = "sgd"
    cfg.train.dense_optimizer = "sgd"
    trainer = Trainer(cfg, CTRTask(cfg, splits), arch)
    full = {"model." + k: v for k, v in ref.state_dict().items()}
    _copy_into(trainer.model.state_dict(), full)
    # Rank r takes rows [r*B, (r+1)*B) of the first 2B train rows.
    b = cfg.train.batch_size
    batch = make_batch(splits.train, torch.arange(rank * b, (rank + 1) * b), splits.schema.sparse_names)
    loss, _ = trainer.model(batch)
    loss.backward()
    trainer.optimizer.step()
    gathered = _gather(trainer.model.state_dict())  # collective: every rank takes part
    return gathered if rank == 0 else {}


@pytest.mark.parametrize("model_type", ["dlrm", "dcn"])
def test_sharded_step_on_two_ranks_matches_single_process_reference(model_type):
    got = run_ranks(_one_step, model_type, world_size=2)[0]
    cfg, splits, arch, ref = _reference(model_type)
    ref = copy.deepcopy(ref)
    b = cfg.train.batch_size
    batch = make_batch(splits.train, torch.arange(0, 2 * b), splits.schema.sparse_names)
    logits = ref(batch.dense_features, batch.sparse_features)
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            # DDP averages dense grads over ranks, and TorchRec divides the tables' all-to-all gradients
            # by the world size (its default gradient division): both equal the mean over all 2B rows.
            lr = cfg.train.embedding_lr if name.startswith("sparse_arch") else cfg.train.dense_lr
            p -= lr * p.grad
    expected = ref.state_dict()
    assert set(expected) == {k.removeprefix("model.") for k in got}
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key.removeprefix("model.")], atol=5e-5, rtol=1e-3)


def _fit(rank: int, world_size: int, run_dir: str) -> dict:
    cfg, splits, arch, _ = _reference("dlrm")
    return Trainer(cfg, CTRTask(cfg, splits), arch, run_dir=run_dir).fit()


def test_fit_on_two_ranks_trains_and_evaluates_sharded(tmp_path):
    results = run_ranks(_fit, str(tmp_path), world_size=2)
    assert results[0]["test"] == results[1]["test"], "both ranks must report the same global metrics"
    assert results[0]["test"]["auc"] > 0.6  # chance is 0.5
    assert (tmp_path / "checkpoints" / "train" / "state.json").exists()
