"""Instance-wise (grouped) architectures: a router sends each sample to one of K groups, each group has its
own embedding dims per field and its own dense layers (iHAS, `search/ihas/`).

Two deployments of the group tables (`GroupLayout.deployment`):

* `shared` (ours, the default): the groups share each field's table, `W_f = max_k d_{k,f}` columns wide,
  and group k reads its first `d_{k,f}` columns. Bytes: per field the widest group.
* `separate` (the paper's): every group has its own tables, `g<k>_t_<f>` at `d_{k,f}`. Bytes: the sum over
  groups. Trained as one table per field `sum_k d_{k,f}` wide in which group k owns a block of columns
  (the same weights and gradients as separate tables; the row-wise optimizer state is shared per row).

Both train as one TorchRec model (`GroupedModel`) with the one `Trainer`: one EBC sharded by the planner,
the router, and one head (our DLRM or DCN dense part) per group; each row is scored by its group's head
only (rows gathered per group and put back in order: the dense compute of one model, not K), so a
group's tables and layers learn from its rows only. The same module serves
(batch in, scores out): the test numbers of a grouped run are its scores.

The router is naive Bayes over per-id group scores: `group(x) = argmax_k log p_k + sum_f S_f[x_f, k]`,
with `S_f[id] = log P(k | id) - log p_k` counted on a clustered sample (`search/ihas/router.py`); unseen
ids score 0. Its tables (`router_<f>`, K columns padded to a multiple of 4, `router.pt` beside the
architecture) are listed among the architecture's tables, so the budget and `torchrec-aes plan` count and
place them like every other table; in training they are a frozen buffer lookup replicated on each rank.

Example::

    arch = Architecture.load("runs/x/architecture.yaml")      # kind: grouped
    train_arch, hooks = kind_of(arch).training_form(arch, "runs/x/architecture.yaml", schema)
    Trainer(cfg, task, train_arch, "runs/y", hooks=hooks).fit()
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_aes.architecture import Architecture, ArchKind, TableArch, check_data_type, register_kind
from torchrec_aes.data.schema import Schema
from torchrec_aes.io import exists, join, load_torch, save_torch_atomic
from torchrec_aes.models.grouped_report import grouped_section
from torchrec_aes.train.hooks import TrainHooks

DEPLOYMENTS = ("shared", "separate")
ROUTER_FILE = "router.pt"


@dataclass
class GroupLayout:
    """Per-group dims of every field and how the groups' tables are laid out.

    Args:
        features: the sparse features, schema order.
        num_embeddings: rows of each feature's table.
        dims: [K][F] embedding dim of feature f in group k (multiples of 4; 0 = group k does not use f).
        deployment: "shared" or "separate" (module docstring).
        data_type: precision of the group tables.
    """

    features: list[str]
    num_embeddings: list[int]
    dims: list[list[int]]
    deployment: str = "shared"
    data_type: str = "fp32"

    def __post_init__(self) -> None:
        if self.deployment not in DEPLOYMENTS:
            raise ValueError(f"deployment: '{self.deployment}' is not one of {', '.join(DEPLOYMENTS)}")
        for k, row in enumerate(self.dims):
            if len(row) != len(self.features):
                raise ValueError(f"groups[{k}]: {len(row)} dims for {len(self.features)} features")
            if any(d < 0 or d % 4 for d in row):
                raise ValueError(f"groups[{k}]: dims {row} must be non-negative multiples of 4")
            if not any(row):
                raise ValueError(f"groups[{k}]: every dim is 0; a group needs at least one feature")

    @property
    def num_groups(self) -> int:
        return len(self.dims)

    def widths(self) -> list[int]:
        """Columns of each feature's training table: the widest group (shared) or all groups' (separate)."""
        cols = list(zip(*self.dims, strict=True))
        return [max(c) if self.deployment == "shared" else sum(c) for c in cols]

    def offsets(self) -> list[list[int]]:
        """[K][F] first column of group k's block in feature f's training table."""
        if self.deployment == "shared":
            return [[0] * len(self.features) for _ in self.dims]
        out, running = [], [0] * len(self.features)
        for row in self.dims:
            out.append(list(running))
            running = [r + d for r, d in zip(running, row, strict=True)]
        return out

    def train_arch(self, schema: Schema) -> Architecture:
        """The training form: one table per feature at `widths()` (0 drops it)."""
        return Architecture.from_dims(schema, self.widths(), method="ihas", data_types=self.data_type)

    def deployed_tables(self) -> list[TableArch]:
        """The group tables as served: shared `t_<f>` at W_f, or separate `g<k>_t_<f>` at d_{k,f}."""
        if self.deployment == "shared":
            return [
                TableArch(f"t_{f}", [f], n, w, self.data_type)
                for f, n, w in zip(self.features, self.num_embeddings, self.widths(), strict=True)
            ]
        return [
            TableArch(f"g{k}_t_{f}", [f], n, d, self.data_type)
            for k, row in enumerate(self.dims)
            for f, n, d in zip(self.features, self.num_embeddings, row, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "data_type": self.data_type, "dims": self.dims}

    @classmethod
    def from_extra(
        cls, extra: dict[str, Any], schema_features: list[str], rows: list[int], source: str
    ) -> GroupLayout:
        spec = extra.get("groups")
        if not isinstance(spec, dict) or not isinstance(spec.get("dims"), list):
            raise ValueError(f"{source}: extra.groups: expected a mapping with 'dims' (one list per group)")
        try:
            return cls(
                list(schema_features),
                list(rows),
                [[int(d) for d in row] for row in spec["dims"]],
                spec.get("deployment", "shared"),
                check_data_type(spec.get("data_type", "fp32"), f"{source}: extra.groups.data_type"),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: extra.groups: {e}") from None


class Router(nn.Module):
    """Naive-Bayes router: per-id group scores summed over its features, plus the log prior; argmax.

    Args:
        features: the features it reads.
        tables: per feature, [rows, K_pad] scores `log P(k | id) - log p_k` (0 for unseen ids).
        log_prior: [K] log p_k.
    """

    def __init__(self, features: list[str], tables: list[torch.Tensor], log_prior: torch.Tensor) -> None:
        super().__init__()
        self.features = list(features)
        self.num_groups = int(log_prior.numel())
        for i, t in enumerate(tables):
            self.register_buffer(f"scores_{i}", t.float())
        self.register_buffer("log_prior", log_prior.float())
        self.log_prior: torch.Tensor

    def table(self, i: int) -> torch.Tensor:
        """[rows, K_pad] scores of feature `features[i]`."""
        t = getattr(self, f"scores_{i}")
        assert isinstance(t, torch.Tensor)
        return t

    def scores(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """[B, K] routing scores."""
        batch = kjt.stride()
        total = self.log_prior.expand(batch, -1).clone()
        for i, f in enumerate(self.features):
            jt = kjt[f]
            table = self.table(i)
            pooled = F.embedding_bag(
                jt.values(), table, jt.offsets(), mode="sum", include_last_offset=True
            )  # [B, K_pad]
            total = total + pooled[:, : self.num_groups]
        return total

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """[B] group of each sample."""
        if self.num_groups == 1:
            return torch.zeros(kjt.stride(), dtype=torch.long, device=self.log_prior.device)
        return self.scores(kjt).argmax(dim=1)

    def state(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "tables": [self.table(i).cpu() for i in range(len(self.features))],
            "log_prior": self.log_prior.cpu(),
        }

    def save(self, directory: str) -> str:
        """Writes `ROUTER_FILE` with a checksum of its tensors (a damaged file is refused, not routed by)."""
        path = join(directory, ROUTER_FILE)
        state = self.state()
        save_torch_atomic(path, {**state, "sha256": _router_digest(state)})
        return path

    @classmethod
    def load(cls, directory: str, source: str = "") -> Router:
        """The router saved beside a grouped architecture.

        Raises:
            ValueError: no file, or one that is not a router or fails its checksum (one line naming it).
        """
        path = join(directory, ROUTER_FILE)
        if not exists(path):
            raise ValueError(f"{source or directory}: a grouped architecture needs {ROUTER_FILE} beside it")
        try:
            blob = load_torch(path)
            features, tables, log_prior = list(blob["features"]), list(blob["tables"]), blob["log_prior"]
        except Exception as e:  # torch.load raises many kinds on a truncated or foreign file
            raise ValueError(f"{path}: not a readable router ({type(e).__name__}); search again") from None
        if "sha256" in blob and blob["sha256"] != _router_digest(blob):  # files from before have none
            raise ValueError(f"{path}: damaged (its checksum does not match); search again")
        return cls(features, tables, log_prior)

    def table_dim(self) -> int:
        """Columns of each router table as served: K padded to a multiple of 4 (FBGEMM's kernels)."""
        return router_dim(self.num_groups)


def _router_digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(list(state["features"])).encode())
    for t in [*state["tables"], state["log_prior"]]:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def router_dim(num_groups: int) -> int:
    return -(-num_groups // 4) * 4


def router_tables(
    features: list[str], rows: dict[str, int], num_groups: int, data_type: str
) -> list[TableArch]:
    """The router's tables as served (counted by the budget, placed by the planner)."""
    if num_groups <= 1:
        return []
    return [TableArch(f"router_{f}", [f], rows[f], router_dim(num_groups), data_type) for f in features]


def routed_logits(
    heads: nn.ModuleList,
    slices: list[list[tuple[str, int, int]]],
    dense: torch.Tensor,
    pooled: KeyedTensor,
    group: torch.Tensor,
) -> torch.Tensor:
    """[B]: each row scored by its own group's head only (`slices[k]`: (feature, first column, dim) of
    group k in its feature's training table). The rows are permuted once into group order (a stable sort
    by group), each head runs on its contiguous slice of rows, and the scores are put back in row order:
    the dense compute of one head per row, whatever K. A group without rows in the batch still runs on an
    empty batch, so every head stays in the graph (DDP expects a gradient, here zero, for each
    parameter)."""
    start = dict(zip(pooled.keys(), pooled.offset_per_key()[:-1], strict=True))
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=len(heads)).tolist()
    # One permutation of the rows into group order; each group's rows are then a contiguous slice.
    values, dense = pooled.values().index_select(0, order), dense.index_select(0, order)
    outs = []
    for head, cols, mine, mine_dense in zip(
        heads, slices, values.split(counts), dense.split(counts), strict=True
    ):
        per_feature = {f: mine[:, start[f] + o : start[f] + o + d] for f, o, d in cols}
        outs.append(head.interact(mine_dense, per_feature))  # type: ignore[operator]
    scores = torch.cat(outs)
    return scores.new_empty(scores.shape).index_copy(0, order, scores)  # back to row order


# Data-dependent splits: a leaf for torch.fx, which TorchRec's train pipeline uses to trace the model.
torch.fx.wrap("routed_logits")


class GroupedModel(nn.Module):
    """Router + one EBC + one head per group: `(dense, KJT) -> logits [B]` of each row's group.

    Args:
        ebc: the training tables (`GroupLayout.widths()` per feature; possibly sharded by DMP).
        layout: the groups' dims and the deployment.
        router: the router (its features must be among the EBC's).
        head: a group's tables -> its head, called as `head.interact(dense, {feature: pooled})` (the
            task's model over tables it does not look up: `Task.head`).
    """

    def __init__(
        self,
        ebc: nn.Module,
        layout: GroupLayout,
        router: Router,
        head: Callable[[list[EmbeddingBagConfig]], nn.Module],
    ) -> None:
        super().__init__()
        self.sparse_arch = ebc
        self.router = router
        self.layout = layout
        offsets = layout.offsets()
        self.slices: list[list[tuple[str, int, int]]] = [
            [(f, o, d) for f, o, d in zip(layout.features, offs, row, strict=True) if d > 0]
            for offs, row in zip(offsets, layout.dims, strict=True)
        ]
        rows = dict(zip(layout.features, layout.num_embeddings, strict=True))
        self.heads = nn.ModuleList(
            head(
                [
                    EmbeddingBagConfig(
                        name=f"g{k}_t_{f}",
                        embedding_dim=d,
                        num_embeddings=rows[f],
                        feature_names=[f],
                        pooling=PoolingType.SUM,
                    )
                    for f, _, d in cols
                ]
            )
            for k, cols in enumerate(self.slices)
        )

    def group_logits(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """[B, K]: every group's head on every row (K x the dense compute of `forward`; for comparisons)."""
        pooled = self.sparse_arch(kjt).to_dict()
        outs = [
            head.interact(dense, {f: pooled[f][:, o : o + d] for f, o, d in cols})  # type: ignore[operator]
            for head, cols in zip(self.heads, self.slices, strict=True)
        ]
        return torch.stack(outs, dim=1)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        group = self.router(sparse_features)  # [B]
        pooled = self.sparse_arch(sparse_features)
        return routed_logits(self.heads, self.slices, dense_features, pooled, group)


class GroupedHooks(TrainHooks):
    """Builds a `GroupedModel` in place of `model.type` (the training form of a grouped architecture)."""

    def __init__(self, layout: GroupLayout, router: Router) -> None:
        self.layout, self.router = layout, router

    def make_model(self, task: Any, ebc: Any) -> nn.Module:
        return GroupedModel(ebc, self.layout, self.router, task.head)


def grouped_architecture(
    layout: GroupLayout, router_features: list[str], router_data_type: str, schema: Schema
) -> Architecture:
    """The deployed architecture (kind `grouped`): group tables + router tables, the layout in `extra`."""
    rows = {f.name: f.num_embeddings for f in schema.sparse}
    pooling = schema.pooling  # the group tables pool each bag as the feature does; the router sums votes
    group_tables = [replace(t, pooling=pooling[t.feature_names[0]]) for t in layout.deployed_tables()]
    tables = group_tables + router_tables(router_features, rows, layout.num_groups, router_data_type)
    return Architecture(
        tables=tables,
        method="ihas",
        schema_hash=schema.hash(),
        kind="grouped",
        extra={
            "groups": layout.to_dict(),
            "router": {"features": list(router_features), "data_type": router_data_type, "file": ROUTER_FILE},
        },
    )


class GroupedKind(ArchKind):
    """Instance-wise groups (iHAS): group tables + router tables; trains as a `GroupedModel`."""

    name = "grouped"

    def layout(self, arch: Architecture, schema: Schema, source: str) -> GroupLayout:
        return GroupLayout.from_extra(
            arch.extra, schema.sparse_names, [f.num_embeddings for f in schema.sparse], source
        )

    def training_form(self, arch: Architecture, source: str, schema: Schema) -> tuple[Architecture, Any]:
        source = source or "architecture"
        known = set(schema.sparse_names)
        for t in arch.tables:
            unknown = [n for n in t.feature_names if n not in known]
            if unknown:
                raise ValueError(
                    f"{source}: table '{t.name}' uses feature(s) {unknown} the data does not have"
                )
        layout = self.layout(arch, schema, source)
        router = Router.load(os.path.dirname(source), source)
        widths = dict(zip(layout.features, layout.widths(), strict=True))
        missing = [f for f in router.features if widths.get(f, 0) == 0]
        if missing:
            raise ValueError(f"{source}: the router reads {missing}, which no group uses")
        return layout.train_arch(schema), GroupedHooks(layout, router)

    def carry(self, arch: Architecture, source: str, run_dir: str) -> None:
        Router.load(source).save(run_dir)

    def report(self, run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
        return grouped_section(run_dir, arch, metrics)


register_kind(GroupedKind())
