"""Serving precision: what TorchRec's inference path serves for a table in int8 or int4.

A table whose `data_type` is int8 or int4 trains in fp32; serving quantizes it row-wise
(`torchrec.inference.modules.quantize_embeddings` -> `QuantEmbeddingBagCollection`, a scale and bias per
row). Its test metrics are measured on exactly those served rows: `served_rows` puts a table's trained
rows through TorchRec's quantized EBC and reads back what a lookup of each id returns, and `served_tables`
swaps them into a (sharded) model for the test pass and restores the trained weights after. Quantization
is per row, so every rank does its own shards (a column-wise shard is quantized on its own, as TorchRec's
sharded inference does).

Example::

    with served_tables(dmp, {"t_c0": "int8"}):
        metrics = task.metrics(dmp, env, "test")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.inference.modules import quantize_embeddings
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

QUANTIZED = {"int8": torch.qint8, "int4": torch.quint4x2}
"""Serving precisions -> the weight dtype `quantize_embeddings` takes for them."""

_CHUNK = 1 << 18


@torch.no_grad()
def served_rows(weights: torch.Tensor, data_type: str) -> torch.Tensor:
    """The rows TorchRec's quantized EBC serves for `weights` [n, d] in `data_type` (int8 | int4): [n, d]
    float32, each row dequantized from its row-wise quantized form."""
    if data_type not in QUANTIZED:
        raise ValueError(f"serving precision '{data_type}' is not one of {', '.join(QUANTIZED)}")
    out = torch.empty(weights.shape, dtype=torch.float32)
    for start in range(0, weights.shape[0], _CHUNK):
        part = weights[start : start + _CHUNK].float().cpu()
        n, d = part.shape
        config = EmbeddingBagConfig(
            name="t", embedding_dim=d, num_embeddings=n, feature_names=["f"], pooling=PoolingType.SUM
        )
        ebc = EmbeddingBagCollection(tables=[config])
        ebc.embedding_bags["t"].weight.copy_(part)
        quant = quantize_embeddings(nn.Sequential(ebc), dtype=QUANTIZED[data_type], inplace=True)[0]
        ids = KeyedJaggedTensor.from_lengths_sync(
            keys=["f"], values=torch.arange(n), lengths=torch.ones(n, dtype=torch.int32)
        )
        out[start : start + n] = quant(ids).to_dict()["f"]
    return out


@contextmanager
def served_tables(module: nn.Module, served: dict[str, str]) -> Iterator[None]:
    """Within the block, the tables named in `served` ({table name: int8 | int4}) of `module` (a model,
    DMP-wrapped or not) hold the rows serving would return; the trained weights are restored after."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for key, value in module.state_dict(keep_vars=True).items():
                parts = key.split(".")
                if len(parts) < 2 or parts[-1] != "weight" or parts[-2] not in served:
                    continue
                local = (
                    [s.tensor for s in value.local_shards()] if isinstance(value, ShardedTensor) else [value]
                )
                for tensor in local:
                    if tensor.numel() == 0:
                        continue
                    saved.append((tensor, tensor.detach().clone()))
                    tensor.copy_(served_rows(tensor.detach(), served[parts[-2]]).to(tensor))
        yield
    finally:
        with torch.no_grad():
            for tensor, trained in saved:
                tensor.copy_(trained)
