"""Latent-factor CF models whose user and item tables are TorchRec tables: MF (BPR) and LightGCN.

Both models hold one `torchrec.EmbeddingBagCollection` with the architecture's two tables (features
`user` and `item`) and read it only through `KeyedJaggedTensor` lookups, so the same code runs with the
EBC unsharded, or sharded by `DistributedModelParallel` (table-wise, column-wise or data-parallel): a
lookup is an ordinary sharded forward whose backward feeds TorchRec's fused table optimizer.

- MF scores a (user, item) pair by the inner product of their rows.
- LightGCN (He et al., SIGIR 2020) propagates over the *whole* tables each step: it reads every row of
  both tables through the EBC (one KJT that asks for each id of each table, pooling one id per bag), so
  under DMP every rank fetches the full tables from wherever their shards live, propagates
  E_{k+1} = D^-1/2 A D^-1/2 E_k over the user-item bipartite train graph on its own device, and the
  backward sends the gradient of every row back to its shard. Final embedding = mean of layers 0..L.

Mixed dims: when the user and item tables differ in dim, the smaller is zero-padded to the larger
D = max(d_user, d_item) after lookup, so scores use the common prefix of the two (MF), and LightGCN's
propagation (which adds item rows into user rows and back) runs at D.

Row-wise sizes (BET): `set_row_dims` gives every user/item its own size d_r <= its table's dim, applied as
a prefix mask (columns >= d_r zeroed) after lookup and before padding/propagation.

Example::

    model = build_cf_model("lightgcn", Architecture.uniform(data.schema, 64), data)
    scores, ego_l2 = model(users, torch.stack([pos, neg], dim=1))  # scores [B, 2]
    user_emb, item_emb = model.final_embeddings()                  # [U, D], [I, D]
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.interactions import CSR, InteractionData
from torchrec_aes.train.hooks import TrainHooks

USER, ITEM = "user", "item"


def _table_for(tables: list[EmbeddingBagConfig], feature: str) -> EmbeddingBagConfig:
    found = [t for t in tables if feature in t.feature_names]
    if len(found) != 1 or found[0].feature_names != [feature]:
        names = {t.name: t.feature_names for t in tables}
        raise ValueError(
            f"CF models need exactly one table for feature '{feature}' holding only that feature; "
            f"got tables {names} (dim-0 tables are dropped)"
        )
    return found[0]


class CFModel(nn.Module):
    """Base of the CF models: user and item tables in one EBC, read through KJT lookups.

    Args:
        tables: the EBC configs; exactly one table for feature `user` and one for `item`.
        device: where the EBC is created (`meta` when DMP will materialise it).
    """

    def __init__(self, tables: list[EmbeddingBagConfig], device: torch.device | None = None) -> None:
        super().__init__()
        if len(tables) != 2:
            raise ValueError(
                f"CF models need two tables (user, item); got {[t.name for t in tables]} "
                "(tables with embedding_dim 0 are dropped)"
            )
        user, item = _table_for(tables, USER), _table_for(tables, ITEM)
        self.num_users, self.num_items = user.num_embeddings, item.num_embeddings
        self.user_dim, self.item_dim = user.embedding_dim, item.embedding_dim
        self.dim = max(self.user_dim, self.item_dim)
        self.table_names = {USER: user.name, ITEM: item.name}
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        # Plain attributes, not buffers: they are search state (BET), not model weights to checkpoint.
        self._row_dims: dict[str, torch.Tensor] = {}
        # Where lookups are issued; None = the device of the EBC's weights. Set it under DMP, where a
        # rank may hold no shard of either table.
        self.compute_device: torch.device | None = None

    # -- lookups -------------------------------------------------------------------------------------
    def raw_lookup(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the tables as stored: users [B] -> [B, d_user], items [M] -> [M, d_item].

        One KJT with keys (user, item) and one id per bag; the shorter key is padded with empty bags
        because a KJT has one stride (batch size) for all keys.
        """
        num_u, num_i = users.numel(), items.numel()
        stride = max(num_u, num_i)
        device = users.device
        lengths = torch.zeros(2 * stride, dtype=torch.int32, device=device)
        lengths[:num_u] = 1
        lengths[stride : stride + num_i] = 1
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[USER, ITEM], values=torch.cat([users, items]).long(), lengths=lengths
        )
        pooled = self.ebc(kjt).to_dict()
        return pooled[USER][:num_u], pooled[ITEM][:num_i]

    def lookup(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with row-wise masks applied, padded to D: users [B] -> [B, D], items [M] -> [M, D]."""
        user_rows, item_rows = self.raw_lookup(users, items)
        return self._prepare(user_rows, users, USER), self._prepare(item_rows, items, ITEM)

    def read_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row of both tables through the EBC (works sharded): ([U, D], [I, D]), masked and padded."""
        device = self._device()
        return self.lookup(
            torch.arange(self.num_users, device=device), torch.arange(self.num_items, device=device)
        )

    def raw_tables(self) -> dict[str, torch.Tensor]:
        """Unmasked, unpadded table weights by feature: {"user": [U, d_user], "item": [I, d_item]}."""
        device = self._device()
        with torch.no_grad():
            user_rows, item_rows = self.raw_lookup(
                torch.arange(self.num_users, device=device), torch.arange(self.num_items, device=device)
            )
        return {USER: user_rows.detach(), ITEM: item_rows.detach()}

    def _device(self) -> torch.device:
        if self.compute_device is not None:
            return self.compute_device
        for t in list(self.ebc.parameters()) + list(self.ebc.buffers()):
            if t.device.type != "meta" and t.numel() > 0:
                return t.device
        return torch.device("cpu")

    def _prepare(self, rows: torch.Tensor, ids: torch.Tensor, feature: str) -> torch.Tensor:
        if feature in self._row_dims:
            dims = self._row_dims[feature].to(rows.device)[ids]  # [N]
            keep = torch.arange(rows.shape[1], device=rows.device) < dims[:, None]
            rows = rows * keep
        return F.pad(rows, (0, self.dim - rows.shape[1])) if rows.shape[1] < self.dim else rows

    # -- row-wise sizes (BET) ------------------------------------------------------------------------
    def set_row_dims(self, user_dims: torch.Tensor | None, item_dims: torch.Tensor | None) -> None:
        """Per-row sizes: row r keeps its first dims[r] columns (None = full rows).

        Args:
            user_dims: [U] ints in [0, d_user], or None.
            item_dims: [I] ints in [0, d_item], or None.
        """
        self._row_dims = {}
        for feature, dims, rows, dim in (
            (USER, user_dims, self.num_users, self.user_dim),
            (ITEM, item_dims, self.num_items, self.item_dim),
        ):
            if dims is None:
                continue
            dims = torch.as_tensor(dims).long()
            if dims.shape != (rows,) or int(dims.min()) < 0 or int(dims.max()) > dim:
                raise ValueError(
                    f"{feature} row dims: expected {rows} ints in [0, {dim}], got shape {tuple(dims.shape)} "
                    f"with range [{int(dims.min())}, {int(dims.max())}]"
                )
            self._row_dims[feature] = dims

    # -- scoring ---------------------------------------------------------------------------------------
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item matrices that scores are inner products of: ([U, D], [I, D])."""
        raise NotImplementedError

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of `items` for `users`.

        Args:
            users: [B] user ids.
            items: [B, n] item ids (for BPR: n = 2, positive then negative).

        Returns:
            (scores [B, n], ego_l2 []): ego_l2 = 0.5 * (sum of squared layer-0 rows of the batch) / B,
            LightGCN's L2 regulariser (computed on the rows used, not the whole tables).
        """
        raise NotImplementedError


class MF(CFModel):
    """Matrix factorisation: score(u, i) = <e_u, e_i>.

    Args:
        tables: EBC configs with one `user` and one `item` table.
        device: where the EBC is created.
    """

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read_tables()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n = items.shape
        user_emb, item_emb = self.lookup(users, items.reshape(-1))  # [B, D], [B * n, D]
        item_emb = item_emb.view(batch, n, -1)
        scores = torch.einsum("bd,bnd->bn", user_emb, item_emb)
        ego_l2 = 0.5 * (user_emb.pow(2).sum() + item_emb.pow(2).sum()) / batch
        return scores, ego_l2


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; backward A^T g = A g reuses A (no transpose of a CSR)."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, ctx.adjacency @ grad


def normalized_adjacency(train: CSR, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the user-item bipartite graph, as a sparse CSR tensor [U + I, U + I].

    Nodes are users 0..U-1 then items U..U+I-1; isolated nodes have degree 0 and an all-zero row.

    Args:
        train: [U] rows of training items.
        num_items: I.
    """
    num_users = train.num_rows
    users, items = train.to_pairs()
    items = items + num_users
    deg = torch.bincount(torch.cat([users, items]), minlength=num_users + num_items).float()
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))
    rows = torch.cat([users, items])
    cols = torch.cat([items, users])
    values = inv_sqrt[rows] * inv_sqrt[cols]
    size = num_users + num_items
    with warnings.catch_warnings():
        # CSR is "beta" in torch; it is the fastest CPU layout for A @ E here (measured vs COO).
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (size, size), check_invariants=True)
        return coo.coalesce().to_sparse_csr()


class LightGCN(CFModel):
    """LightGCN: layer-mean of L propagations of the tables over the normalised train graph.

    Args:
        tables: EBC configs with one `user` and one `item` table.
        adjacency: [U + I, U + I] sparse normalised adjacency (`normalized_adjacency`); moved to the
            embeddings' device on first use.
        num_layers: propagation layers L (the paper's default 3).
        device: where the EBC is created.
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        adjacency: torch.Tensor,
        num_layers: int = 3,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(tables, device)
        size = self.num_users + self.num_items
        if tuple(adjacency.shape) != (size, size):
            raise ValueError(f"adjacency: expected shape ({size}, {size}), got {tuple(adjacency.shape)}")
        if num_layers < 0:
            raise ValueError(f"model.num_layers: must be >= 0, got {num_layers}")
        # A plain attribute: a sparse tensor is neither a weight nor something DMP should shard or move.
        self.adjacency = adjacency
        self.num_layers = num_layers

    def propagate(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer mean of E, AE, ..., A^L E for E = [users; items]: ([U, D], [I, D]) -> same shapes."""
        if self.adjacency.device != user_emb.device:
            self.adjacency = self.adjacency.to(user_emb.device)
        x = torch.cat([user_emb, item_emb])
        total = x
        for _ in range(self.num_layers):
            x = _SymmetricSpMM.apply(self.adjacency, x)
            total = total + x
        total = total / (self.num_layers + 1)
        return total[: self.num_users], total[self.num_users :]

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(*self.read_tables())

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = users.numel()
        ego_users, ego_items = self.read_tables()
        final_users, final_items = self.propagate(ego_users, ego_items)
        scores = torch.einsum("bd,bnd->bn", final_users[users], final_items[items])
        ego_l2 = 0.5 * (ego_users[users].pow(2).sum() + ego_items[items].pow(2).sum()) / batch
        return scores, ego_l2


CF_MODELS = ("mf", "lightgcn")


def build_cf_model(
    model_type: str,
    arch: Architecture,
    data: InteractionData,
    num_layers: int = 3,
    device: torch.device | None = None,
) -> CFModel:
    """The CF model `model_type` ("mf" | "lightgcn") over `arch`'s user and item tables.

    Args:
        model_type: "mf" or "lightgcn".
        arch: an architecture of `data.schema` (tables for features `user` and `item`).
        data: the interactions (LightGCN's graph is built from `data.train`).
        num_layers: LightGCN propagation layers.
        device: where the EBC is created (`meta` for DMP).
    """
    arch.check_schema(data.schema)
    tables = arch.to_ebc_configs()
    if model_type == "mf":
        return MF(tables, device)
    if model_type == "lightgcn":
        return LightGCN(tables, normalized_adjacency(data.train, data.num_items), num_layers, device)
    raise ValueError(f"model.type: '{model_type}' is not a CF model; allowed: {', '.join(CF_MODELS)}")


@torch.no_grad()
def load_tables(model: CFModel, tables: dict[str, torch.Tensor]) -> None:
    """Copies full table weights {"user": [U, d_user], "item": [I, d_item]} into a (sharded) model.

    Each rank writes the slices of its local shards (table-wise, column-wise) or the whole table
    (data-parallel, unsharded), so every rank must pass the same full tensors.
    """
    by_table = {}
    shapes = {USER: (model.num_users, model.user_dim), ITEM: (model.num_items, model.item_dim)}
    for feature, full in tables.items():
        if feature not in shapes:
            raise ValueError(f"initial tables: unknown feature '{feature}'; allowed: {USER}, {ITEM}")
        if tuple(full.shape) != shapes[feature]:
            raise ValueError(
                f"initial '{feature}' table: expected shape {shapes[feature]}, got {tuple(full.shape)}"
            )
        by_table[model.table_names[feature]] = full
    for key, value in model.ebc.state_dict().items():
        name = key.split(".")[-2]  # embedding_bags.<table>.weight
        if name not in by_table:
            continue
        full = by_table[name]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc])
        else:
            value.copy_(full)


class TableHooks(TrainHooks):
    """CF training from given weights and/or under per-row sizes (BET), optionally keeping the best
    epoch's raw tables.

    Args:
        init_tables: start from these weights ({"user": [U, d_user], "item": [I, d_item]}) instead of a
            fresh initialisation; the optimizer starts fresh.
        row_dims: per-row sizes {"user": [U], "item": [I]} applied as prefix masks.
        keep_tables: keep the best epoch's unmasked weights in `best_tables` (CPU tensors).
    """

    def __init__(
        self,
        init_tables: dict[str, torch.Tensor] | None = None,
        row_dims: dict[str, torch.Tensor] | None = None,
        keep_tables: bool = False,
    ) -> None:
        self.init_tables, self.row_dims, self.keep_tables = init_tables, row_dims, keep_tables
        self.best_tables: dict[str, torch.Tensor] | None = None

    def on_model(self, dmp: DistributedModelParallel) -> None:
        cf: CFModel = dmp.module
        if self.init_tables is not None:
            load_tables(cf, self.init_tables)
        if self.row_dims is not None:
            cf.set_row_dims(self.row_dims.get(USER), self.row_dims.get(ITEM))

    def on_best(self, dmp: DistributedModelParallel) -> None:
        if self.keep_tables:
            cf: CFModel = dmp.module
            self.best_tables = {k: v.cpu() for k, v in cf.raw_tables().items()}
