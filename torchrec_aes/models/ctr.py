"""Mixed-dimension CTR models: DLRM and DCN over a TorchRec `EmbeddingBagCollection`.

TorchRec's own `DLRM` asserts one embedding dim for all tables, so we compose its blocks (`DenseArch`,
`InteractionArch`, `OverArch`, `LowRankCrossNet`) around an EBC whose tables may have different dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class MixedDimDLRM(nn.Module):
    """DLRM with per-table embedding dims.

    Each table's pooled embedding (d_f columns) is projected to the common dim D (the last dense-arch
    layer) by its own linear map — identity where d_f == D — and then TorchRec's dot `InteractionArch`
    and `OverArch` run as in DLRM.

    Args:
        embedding_bag_collection: the (possibly sharded) tables; its features are the model's features.
        dense_in_features: number of dense features.
        dense_arch_layer_sizes: bottom MLP sizes; the last one is D.
        over_arch_layer_sizes: top MLP hidden sizes; a final 1-unit layer is appended.

    Example::

        model = MixedDimDLRM(ebc, dense_in_features=13, dense_arch_layer_sizes=[64, 16],
                             over_arch_layer_sizes=[64, 32])
        logits = model(dense, kjt)  # [B]
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: list[int],
        over_arch_layer_sizes: list[int],
    ) -> None:
        super().__init__()
        self.sparse_arch = embedding_bag_collection
        configs = embedding_bag_collection.embedding_bag_configs()
        dim = dense_arch_layer_sizes[-1]
        self.feature_names = [n for c in configs for n in c.feature_names]
        # One projection per feature (a shared table pools per feature, each gets its own slot).
        self.projections = nn.ModuleDict(
            {
                name: (
                    nn.Identity() if c.embedding_dim == dim else nn.Linear(c.embedding_dim, dim, bias=False)
                )
                for c in configs
                for name in c.feature_names
            }
        )
        self.dense_arch = DenseArch(dense_in_features, dense_arch_layer_sizes)
        num_features = len(self.feature_names)
        self.inter_arch = InteractionArch(num_sparse_features=num_features)
        over_in = dim + num_features * (num_features + 1) // 2
        self.over_arch = OverArch(over_in, list(over_arch_layer_sizes) + [1])

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """dense [B, num_dense], KJT -> logits [B]."""
        pooled: KeyedTensor = self.sparse_arch(sparse_features)
        return self.interact(dense_features, pooled.to_dict())

    def interact(self, dense_features: torch.Tensor, per_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """dense [B, num_dense] and each feature's pooled embedding [B, d_f] -> logits [B]."""
        embedded = self.dense_arch(dense_features)  # [B, D]
        sparse = torch.stack([self.projections[n](per_feature[n]) for n in self.feature_names], dim=1)
        interacted = self.inter_arch(dense_features=embedded, sparse_features=sparse)  # [B, D + F(F+1)/2]
        return self.over_arch(interacted).squeeze(-1)


class MixedDimDCN(nn.Module):
    """DCN-v2 style model: [dense, concat of mixed-dim embeddings] -> `LowRankCrossNet` -> MLP.

    Concatenation needs no projection, so every table keeps its own dim.

    Args:
        embedding_bag_collection: the (possibly sharded) tables.
        dense_in_features: number of dense features.
        cross_layers: number of low-rank cross layers.
        cross_rank: rank of each cross layer.
        over_arch_layer_sizes: MLP hidden sizes after the cross net; a final 1-unit layer is appended.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        cross_layers: int,
        cross_rank: int,
        over_arch_layer_sizes: list[int],
    ) -> None:
        super().__init__()
        self.sparse_arch = embedding_bag_collection
        configs = embedding_bag_collection.embedding_bag_configs()
        self.feature_names = [n for c in configs for n in c.feature_names]
        in_features = dense_in_features + sum(c.embedding_dim * len(c.feature_names) for c in configs)
        self.crossnet = LowRankCrossNet(in_features, num_layers=cross_layers, low_rank=cross_rank)
        self.over_arch = OverArch(in_features, list(over_arch_layer_sizes) + [1])

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """dense [B, num_dense], KJT -> logits [B]."""
        # A sharded EBC may return its keys in another order than the unsharded one: concatenate by name.
        return self.interact(dense_features, self.sparse_arch(sparse_features).to_dict())

    def interact(self, dense_features: torch.Tensor, per_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """dense [B, num_dense] and each feature's pooled embedding [B, d_f] -> logits [B]."""
        x = torch.cat(
            [dense_features] + [per_feature[n] for n in self.feature_names], dim=1
        )  # [B, Dd+sum d_f]
        return self.over_arch(self.crossnet(x)).squeeze(-1)


@torch.fx.wrap
def _bag_sizes(features: KeyedJaggedTensor, keys: list[str]) -> torch.Tensor:
    """[B, 1] float: ids in each row's bags of `keys` together (at least 1), to turn sums into means.

    A torch.fx leaf: TorchRec's train pipeline traces the model and must not trace into the KJT."""
    jagged = features.to_dict()
    total = torch.stack([jagged[k].lengths() for k in keys]).sum(0)
    return total.clamp(min=1).to(torch.float32).unsqueeze(1)


class FeatureGroups(nn.Module):
    """Several tables pooled into one embedding per feature: the outputs of a feature's tables (e.g. its
    frequency buckets, `models/frequency.py`) zero-padded to the widest and summed. A model built around
    it sees one feature per group, as if each had one table of that width.

    A feature pooled by mean over its whole bag (`mean`) has sum-pooled tables; their sum is divided by
    the number of ids in all of them, which a mean per table could not give.

    Args:
        inner: the tables (an EBC, or a supernet's elastic EBC; anything with `embedding_bag_configs()`
            and `forward(KJT) -> KeyedTensor` keyed by the tables' features).
        groups: [(feature, [keys of `inner` pooled into it])], in the order the model sees the features.
        mean: the features pooled by mean.
    """

    def __init__(
        self, inner: nn.Module, groups: list[tuple[str, list[str]]], mean: frozenset[str] = frozenset()
    ) -> None:
        super().__init__()
        self.inner = inner
        self.groups = [(f, list(keys)) for f, keys in groups]
        self.mean = frozenset(mean)
        configs = {n: c for c in inner.embedding_bag_configs() for n in c.feature_names}  # type: ignore[operator]
        self._widths = {k: configs[k].embedding_dim for _, keys in self.groups for k in keys}
        self._configs = [
            EmbeddingBagConfig(
                name=f"t_{feature}",
                embedding_dim=max(configs[k].embedding_dim for k in keys),
                num_embeddings=sum(configs[k].num_embeddings for k in keys),
                feature_names=[feature],
            )
            for feature, keys in self.groups
        ]

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """One config per feature, at its widest table (what the model's layers are sized by)."""
        return list(self._configs)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.inner(features).to_dict()
        tensors = []
        for (feature, keys), config in zip(self.groups, self._configs, strict=True):
            width = config.embedding_dim
            # Widths from the configs (Python ints), so the train pipeline's torch.fx pass can trace this.
            parts = [
                pooled[k] if self._widths[k] == width else F.pad(pooled[k], (0, width - self._widths[k]))
                for k in keys
            ]
            total = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
            tensors.append(total / _bag_sizes(features, keys) if feature in self.mean else total)
        return KeyedTensor(
            keys=[f for f, _ in self.groups],
            length_per_key=[c.embedding_dim for c in self._configs],
            values=torch.cat(tensors, dim=1),
            key_dim=1,
        )


class TableSpec:
    """Stands in for an EBC when a model is built over tables it does not look up itself (it is called
    through `interact` with pooled embeddings from elsewhere, e.g. one head per group of iHAS).

    Args:
        configs: the tables the model sees (their dims size its layers).
    """

    def __init__(self, configs: list[EmbeddingBagConfig]) -> None:
        self._configs = list(configs)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)


def build_ctr_model(model_type: str, ebc: EmbeddingBagCollection, num_dense: int, model_cfg) -> nn.Module:
    """The CTR model named by `model.type` around `ebc` (dims taken from the EBC's tables; a `TableSpec`
    builds a model that is only called through `interact`)."""
    if model_type == "dlrm":
        return MixedDimDLRM(ebc, num_dense, list(model_cfg.dense_arch), list(model_cfg.over_arch))
    if model_type == "dcn":
        return MixedDimDCN(
            ebc, num_dense, model_cfg.cross_layers, model_cfg.cross_rank, list(model_cfg.over_arch)
        )
    raise ValueError(f"model.type: '{model_type}' is not a CTR model (dlrm, dcn)")
