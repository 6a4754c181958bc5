"""The weight-sharing supernet: an elastic wrapper around a TorchRec `EmbeddingBagCollection`.

Every table is an ordinary TorchRec table at its largest candidate dim d_max, so the planner and DMP shard
it like any other. Choosing dim d for a table means using only the first d columns of its pooled
embedding (a prefix mask, applied *after* the lookup): a candidate's weights are a prefix of the larger
candidates', and training any architecture trains the shared prefixes.

The mask lives in this wrapper and not in the EBC because TorchRec's `TrainPipelineSparseDist` replaces the
sharded EBC's forward with a pipelined one; a wrapper that calls the EBC and then masks keeps working under
DMP and the pipeline. The downstream model always sees the same shapes:

* without `output_dim` (e.g. DCN): each feature is d_max wide, zero beyond the chosen d (zero padding);
* with `output_dim=D` (e.g. DLRM): each feature is projected to D by a projection owned by its
  (table, candidate) pair -- identity where the candidate equals D -- so the downstream model sees every
  table at D and needs no projections of its own.

Dims are plain Python state set by `set_dims` before each step: a step uses one architecture for the whole
batch, and every rank must set the same dims (the caller seeds its sampling identically on every rank,
`supernet.sampling`).

With `sequences` (a user's `EmbeddingCollection`s, each at d_max) the same wrapper also serves their
per-id embeddings: one dim per collection (TorchRec's EC needs one dim for all its tables), chosen with the
tables' (`table_names` lists each collection once, after the EBC's tables), zero-padded beyond it. The
user's model reads them through a `SequenceView` (`sequence_view(name)`).

`build_elastic_model` puts an elastic EBC into our CTR models (DLRM with projections, DCN with padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_aes.config import ModelConfig
from torchrec_aes.models.ctr import FeatureGroups, build_ctr_model


def _projection_key(feature: str, dim: int) -> str:
    return f"{feature}__d{dim}"


class ElasticEmbeddingBagCollection(nn.Module):
    """An EBC whose tables can be used at any candidate dim, chosen per step.

    Args:
        embedding_bag_collection: the tables, each at `max(candidates)` columns (meta, CPU, or later
            sharded by DMP; any module with `embedding_bag_configs()` and `forward(KJT) -> KeyedTensor`).
        candidates: the candidate dims, multiples of 4 (FBGEMM's fused kernels need that for the final,
            retrained tables), shared by all tables.
        output_dim: if set, each feature is projected to this width by a per-(table, candidate) linear map
            (identity where the candidate equals it); if None, features are zero-padded to d_max.
        shared_projection: with `output_dim`, one d_max -> output_dim map per table instead, of which
            candidate d uses the first d input columns (weight sharing extended to the projection).
        sequences: {collection name: an `EmbeddingCollection` (or a stand-in with `embedding_configs()` and
            `forward(KJT) -> {feature: JaggedTensor}`) with every table at d_max}; zero padding only.

    Example::

        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t_c0", embedding_dim=64,
            num_embeddings=1000, feature_names=["c0"])], device=torch.device("meta"))
        elastic = ElasticEmbeddingBagCollection(ebc, candidates=[8, 16, 32, 64], output_dim=16)
        model = MixedDimDLRM(elastic, 13, [64, 16], [64, 32])  # sees every table at 16 columns
        elastic.set_dims({"t_c0": 8})   # same value on every rank, before the step
        logits = model(dense, kjt)      # [B]; DMP and TrainPipelineSparseDist shard `ebc` as usual
    """

    def __init__(
        self,
        embedding_bag_collection: nn.Module,
        candidates: Sequence[int],
        output_dim: int | None = None,
        shared_projection: bool = False,
        sequences: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        cands = sorted(set(int(c) for c in candidates))
        if not cands or any(c <= 0 or c % 4 for c in cands):
            raise ValueError(f"candidates {list(candidates)} must be non-empty positive multiples of 4")
        self.ebc = embedding_bag_collection
        self.candidates = cands
        self.max_dim = cands[-1]
        self.output_dim = output_dim
        self.shared_projection = shared_projection
        configs: list[EmbeddingBagConfig] = list(embedding_bag_collection.embedding_bag_configs())  # type: ignore[operator]
        wrong = [c.name for c in configs if c.embedding_dim != self.max_dim]
        if wrong:
            raise ValueError(
                f"tables {wrong} are not at the largest candidate dim {self.max_dim}; an elastic EBC holds "
                "every "
                "table at max(candidates)"
            )
        self._configs = configs
        # Keyed `c_<collection>`: a collection may have any name, "items" or "keys" included.
        self.collection_names = list(sequences or {})
        self.ecs = nn.ModuleDict({f"c_{name}": ec for name, ec in (sequences or {}).items()})
        if self.ecs and output_dim is not None:
            raise ValueError("an elastic EBC with sequences zero-pads (no output_dim)")
        for name, ec in (sequences or {}).items():
            wrong = [c.name for c in ec.embedding_configs() if c.embedding_dim != self.max_dim]  # type: ignore[operator]
            if wrong or name in {c.name for c in configs}:
                raise ValueError(
                    f"collection '{name}': tables {wrong} are not at the largest candidate dim {self.max_dim}"
                    if wrong
                    else f"collection '{name}' has the name of a table"
                )
        # What a choice sets: each pooled table, then each collection (one dim for all its tables).
        self.table_names = [c.name for c in configs] + self.collection_names
        self.feature_names = [n for c in configs for n in c.feature_names]
        self._table_of = {n: c.name for c in configs for n in c.feature_names}
        self._dims: dict[str, int] = {name: self.max_dim for name in self.table_names}
        self._half: dict[str, bool] = {}
        self.projections = nn.ModuleDict()
        if output_dim is not None:
            for feature in self.feature_names:
                # Shared: one d_max -> D map per table; candidate d uses its first d input columns.
                for d in [self.max_dim] if shared_projection else cands:
                    self.projections[_projection_key(feature, d)] = (
                        nn.Identity() if d == output_dim else nn.Linear(d, output_dim, bias=False)
                    )

    # -------------------------------------------------------------------------------------------------
    def table_configs(self) -> list[EmbeddingBagConfig]:
        """The real tables (every one at d_max)."""
        return list(self._configs)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The tables as the downstream model sees them: at `output_dim` if set, else at d_max.

        This is what a model built around this module (e.g. `MixedDimDLRM`) reads to size its layers; the
        real tables are `table_configs()`.
        """
        width = self.output_dim if self.output_dim is not None else self.max_dim
        return [
            EmbeddingBagConfig(
                name=c.name,
                embedding_dim=width,
                num_embeddings=c.num_embeddings,
                feature_names=list(c.feature_names),
                pooling=c.pooling,
            )
            for c in self._configs
        ]

    @property
    def dims(self) -> dict[str, int]:
        """The current dim of every table, by table name (0 = the table's output is zeroed)."""
        return dict(self._dims)

    def set_dims(self, dims: Mapping[str, int] | Sequence[int]) -> None:
        """Sets the dim of each table for the next forward passes.

        Args:
            dims: by table name, or a list in `table_names` order. Each value is a candidate, or 0 to zero
                the table's output (how feature importance is measured). Tables not named keep their dim.
        """
        if not isinstance(dims, Mapping):
            if len(dims) != len(self.table_names):
                raise ValueError(f"got {len(dims)} dims for {len(self.table_names)} tables")
            dims = dict(zip(self.table_names, dims, strict=True))
        for name, d in dims.items():
            if name not in self._dims:
                raise ValueError(f"unknown table '{name}'; tables: {', '.join(self.table_names)}")
            if int(d) != 0 and int(d) not in self.candidates:
                raise ValueError(f"table '{name}': dim {d} is not 0 or a candidate {self.candidates}")
        self._dims.update({name: int(d) for name, d in dims.items()})

    def set_half(self, tables: Sequence[bool]) -> None:
        """Per table (in `table_names` order): simulate fp16 storage of its chosen prefix in the next forward
        passes -- values rounded to fp16, gradients passed straight through -- so a supernet trained in
        fp32 scores what an fp16 table would lose in precision (exact for one id per bag; for multi-hot
        bags the pooled embedding is rounded instead of each row, an approximation)."""
        if len(tables) != len(self.table_names):
            raise ValueError(f"got {len(tables)} precision flags for {len(self.table_names)} tables")
        self._half = {name: bool(h) for name, h in zip(self.table_names, tables, strict=True)}

    # -------------------------------------------------------------------------------------------------
    def mask(self, pooled: Mapping[str, torch.Tensor]) -> KeyedTensor:
        """Applies the current dims to pooled embeddings.

        Args:
            pooled: feature name -> [B, d_max] pooled embedding (e.g. `KeyedTensor.to_dict()` of the EBC).

        Returns:
            A KeyedTensor with keys `feature_names`, each [B, output_dim] (or [B, d_max], zero beyond d).
        """
        outputs = []
        unused: list[torch.Tensor] = []
        for feature in self.feature_names:
            emb = pooled[feature]  # [B, d_max]
            d = self._dims[self._table_of[feature]]
            if self._half.get(self._table_of[feature]):
                # Straight-through fp16 rounding of the (used) prefix: forward sees fp16 values.
                emb = emb + (emb.half().float() - emb).detach()
            if self.output_dim is None:
                # Zero padding instead of a multiplicative mask: the same values, no [B, d_max] mask tensor.
                out = F.pad(emb[:, :d], (0, self.max_dim - d)) if d < self.max_dim else emb
            elif d == 0:
                out = emb[:, :1].mul(0.0).expand(-1, self.output_dim)
            elif self.shared_projection:
                proj = self.projections[_projection_key(feature, self.max_dim)]
                if isinstance(proj, nn.Identity):
                    out = F.pad(emb[:, :d], (0, self.max_dim - d)) if d < self.max_dim else emb
                else:
                    assert isinstance(proj, nn.Linear)
                    out = F.linear(emb[:, :d], proj.weight[:, :d])
            else:
                out = self.projections[_projection_key(feature, d)](emb[:, :d])
            if self.output_dim is not None and self.training and torch.is_grad_enabled():
                # DMP wraps dense modules in DDP with static_graph=True, which needs every parameter in
                # every step's graph; projections this choice does not use (the other candidates', or the
                # shared one of a zeroed table) enter with weight 0.
                idle = [self.max_dim] if self.shared_projection else self.candidates
                unused.extend(
                    p.sum()
                    for k in idle
                    if k != d and (d == 0 or not self.shared_projection)
                    for p in self.projections[_projection_key(feature, k)].parameters()
                )
            outputs.append(out)
        if unused:
            outputs[0] = outputs[0] + 0.0 * torch.stack(unused).sum()
        width = self.output_dim if self.output_dim is not None else self.max_dim
        # Lengths as Python ints keep this traceable by the train pipeline's torch.fx pass.
        return KeyedTensor(
            keys=list(self.feature_names),
            length_per_key=[width] * len(self.feature_names),
            values=torch.cat(outputs, dim=1),
            key_dim=1,
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """KJT -> KeyedTensor of masked (and projected) pooled embeddings, keys in `feature_names` order."""
        # A sharded EBC may order its output keys differently from the unsharded one: index by name.
        return self.mask(self.ebc(features).to_dict())

    def sequence_configs(self, name: str) -> list[EmbeddingConfig]:
        """The tables of collection `name` as its user sees them: at d_max (zero beyond the chosen dim)."""
        return list(self.collection(name).embedding_configs())  # type: ignore[operator]

    def collection(self, name: str) -> nn.Module:
        """The `EmbeddingCollection` (or stand-in) of collection `name`."""
        return self.ecs[f"c_{name}"]

    def set_collection(self, name: str, module: nn.Module) -> None:
        """Replaces collection `name`'s `EmbeddingCollection` (e.g. by cached lookups of a fixed slice)."""
        self.ecs[f"c_{name}"] = module

    def sequence(self, name: str, features: KeyedJaggedTensor | None) -> dict[str, JaggedTensor]:
        """The per-id embeddings of collection `name` at its current dim, zero-padded to d_max (zero for
        dim 0; fp16-rounded with `set_half`, straight through)."""
        return masked_sequences(
            self.collection(name)(features), self._dims[name], self.max_dim, self._half.get(name, False)
        )

    def sequence_view(self, name: str) -> SequenceView:
        """What the user's model gets in place of collection `name`'s `EmbeddingCollection`."""
        return SequenceView(self, name)


def masked_sequences(
    embeddings: dict[str, JaggedTensor], dim: int, max_dim: int, half: bool
) -> dict[str, JaggedTensor]:
    """Per-id embeddings [ids, max_dim] used at `dim` columns: zero beyond it (all zero for 0), fp16-rounded
    (straight through) with `half`."""
    out = {}
    for key, jt in embeddings.items():
        values = jt.values()
        if half:
            values = values + (values.half().float() - values).detach()
        if dim == 0:
            values = values * 0.0
        elif dim < max_dim:
            values = F.pad(values[:, :dim], (0, max_dim - dim))
        out[key] = JaggedTensor(values=values, lengths=jt.lengths())
    return out


# Iterates the collection's output: a leaf for torch.fx, which TorchRec's train pipeline traces with (the
# EC's lookup itself stays in the graph, so the pipeline sees it).
torch.fx.wrap("masked_sequences")


class SequenceView(nn.Module):
    """An `EmbeddingCollection` look-alike over one collection of an elastic EBC: its configs (at d_max)
    and, called with a KJT, the collection's per-id embeddings at the current dim. It does not register
    the elastic EBC as a submodule (the model holds that once, where DMP shards it)."""

    # TorchRec's train pipeline traces into it (it holds no sharded module itself, so it would be a leaf and
    # the collection's lookup would not be pipelined).
    _is_pytorch_fx_traceable = True

    def __init__(self, elastic: ElasticEmbeddingBagCollection, name: str) -> None:
        super().__init__()
        self._elastic = [elastic]  # a list: not a submodule
        self.name = name

    def embedding_configs(self) -> list[EmbeddingConfig]:
        return self._elastic[0].sequence_configs(self.name)

    def embedding_dim(self) -> int:
        return self._elastic[0].max_dim

    def forward(self, features: KeyedJaggedTensor | None) -> dict[str, JaggedTensor]:
        return self._elastic[0].sequence(self.name, features)


def build_elastic_model(
    model_cfg: ModelConfig,
    lookup: nn.Module,
    candidates: Sequence[int],
    num_dense: int,
    shared_projection: bool = True,
    groups: list[tuple[str, list[str]]] | None = None,
    mean: frozenset[str] = frozenset(),
) -> nn.Module:
    """The CTR model of `model_cfg` around an elastic EBC over `lookup` (tables at max(candidates)).

    DLRM: projections to the interaction dim (one per table with `shared_projection`, else one per
    (table, candidate)), so the model sees fixed widths. DCN: zero padding to max(candidates). With
    `groups` ([(feature, table features)], e.g. a feature's frequency blocks), the elastic tables' outputs
    are summed per feature (`models.ctr.FeatureGroups`; divided by the bag's size for the features in
    `mean`) before the model sees them.
    """
    if model_cfg.type == "dlrm":
        elastic = ElasticEmbeddingBagCollection(
            lookup, candidates, output_dim=model_cfg.dense_arch[-1], shared_projection=shared_projection
        )
    elif model_cfg.type == "dcn":
        elastic = ElasticEmbeddingBagCollection(lookup, candidates)
    else:
        raise ValueError(f"model.type: elastic supernets support dlrm and dcn, got '{model_cfg.type}'")
    sparse: nn.Module = elastic if groups is None else FeatureGroups(elastic, groups, mean)
    return build_ctr_model(model_cfg.type, sparse, num_dense, model_cfg)  # type: ignore[arg-type]


def find_elastic(model: nn.Module) -> ElasticEmbeddingBagCollection:
    """The (single) elastic EBC inside `model` (also inside DMP)."""
    found = [m for m in model.modules() if isinstance(m, ElasticEmbeddingBagCollection)]
    if len(found) != 1:
        raise ValueError(f"expected one ElasticEmbeddingBagCollection in the model, found {len(found)}")
    return found[0]
