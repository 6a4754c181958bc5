"""Scoring subnets of a trained supernet on a fixed validation slice, memoised.

A supernet's subnets differ only after the (sharded) lookup, so the pooled embeddings of a fixed
validation slice are looked up once through the sharded tables, gathered (`slice_evaluator`), and every
scoring afterwards runs on one process without collectives. Scores are memoised by architecture, and each
scoring also reports the AUC on the even and odd rows of the slice: two independent half-slice scorings
that a search can use to judge a difference against the slice's noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from torchrec_aes.data.dataset import Rows
from torchrec_aes.models.ctr import FeatureGroups
from torchrec_aes.supernet.elastic import find_elastic
from torchrec_aes.supernet.stats import placement_difference, placements
from torchrec_aes.train.distributed import DistEnv

KEEP_LOGITS = 512
"""Logit vectors kept for paired comparisons (N floats each)."""

PARTS = ("all", "select", "confirm")
"""Rows of the slice a score is taken on: all, the even rows, the odd rows."""


def _rows(part: str) -> slice:
    return {"all": slice(None), "select": slice(0, None, 2), "confirm": slice(1, None, 2)}[part]


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (Mann-Whitney, ties get average ranks) of scores [N] against labels [N] in {0, 1}."""
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # average 1-based rank of each score
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class _CachedLookup(nn.Module):
    """Stands in for the EBC under an elastic EBC: returns fixed pooled embeddings, whatever the input."""

    def __init__(self, configs: list[EmbeddingBagConfig], pooled: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._configs = configs
        self.pooled = pooled

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def forward(self, features: Any) -> KeyedTensor:
        keys = [n for c in self._configs for n in c.feature_names]
        return KeyedTensor.from_tensor_list(keys, [self.pooled[k] for k in keys])


Sequences = dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]
"""{collection: {feature: (values [ids, d_max], lengths [N])}}: per-id embeddings of a fixed slice."""


class _CachedSequence(nn.Module):
    """Stands in for a collection's `EmbeddingCollection` under an elastic EBC: fixed per-id embeddings."""

    def __init__(self, configs: list[Any], jagged: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self._configs = configs
        self.jagged = jagged

    def embedding_configs(self) -> list[Any]:
        return self._configs

    def forward(self, features: Any) -> dict[str, JaggedTensor]:
        return {k: JaggedTensor(values=v, lengths=n) for k, (v, n) in self.jagged.items()}


class _ChoiceLookup(nn.Module):
    """Stands in for the elastic EBC in the evaluator: every (table, candidate) output on the fixed slice
    is computed once, and a forward only picks the current choice's (no lookup, no projection). With
    `groups` it stands in for the per-feature pooling around the elastic EBC too (`FeatureGroups`): a
    feature's output is the sum of its tables' chosen outputs.

    Args:
        configs: what the model sees (the elastic EBC's configs, or the pooling's per-feature ones).
        table_of_feature: the table of each elastic feature.
        outputs: [elastic feature][candidate] -> [N, width], or None where the output is zero.
        width: output columns per feature.
        groups: per model feature, the elastic features summed into it (None: one each).
    """

    def __init__(
        self,
        configs: list[EmbeddingBagConfig],
        table_of_feature: list[int],
        outputs: list[list[torch.Tensor | None]],
        width: int,
        groups: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self._configs = configs
        self.keys = [n for c in configs for n in c.feature_names]
        self.table_of_feature = table_of_feature
        self.outputs = outputs
        self.groups = groups or [[i] for i in range(len(table_of_feature))]
        self.zero = torch.zeros_like(next(o for row in outputs for o in row if o is not None))
        self.width = width
        self.choice: list[int] = []

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def forward(self, features: Any) -> KeyedTensor:
        per_feature = []
        for members in self.groups:
            chosen = [
                out
                for i in members
                if (k := self.choice[self.table_of_feature[i]]) >= 0
                and (out := self.outputs[i][k]) is not None
            ]
            per_feature.append(
                chosen[0] if len(chosen) == 1 else sum(chosen[1:], chosen[0]) if chosen else self.zero
            )
        return KeyedTensor(
            keys=self.keys,
            length_per_key=[self.width] * len(self.keys),
            values=torch.cat(per_feature, dim=1),
            key_dim=1,
        )


class _Constant(nn.Module):
    """Returns a fixed tensor whatever the input (the dense arch's output on the fixed slice)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Any) -> torch.Tensor:
        return self.value


class SupernetEvaluator:
    """Scores architectures with the trained supernet on a fixed validation slice, on one process.

    With DLRM projections (`output_dim`), what does not depend on the architecture is computed once: the
    dense arch's output and every (table, candidate)'s projected embedding of the slice
    (F * K * N * D floats); a scoring then only runs the interaction and the over arch. This makes the
    RL search several times faster (scorings are most of its time).

    Args:
        build_model: `lookup -> model`, the supernet's model around a stand-in for its EBC (e.g.
            `build_elastic_model` with the run's model config); its state must load `dense_state`.
        configs: the supernet's tables (at d_max).
        candidates: the options a choice indexes: candidate dims, or (dim, data type) pairs whose fp16
            ones are scored with their prefix rounded to fp16 (`ElasticEmbeddingBagCollection.set_half`).
        pooled: feature -> [N, d_max] pooled embeddings of the slice (from the sharded tables).
        dense: [N, num_dense] dense features of the slice.
        labels: [N] labels.
        dense_state: state dict of the model without the embedding tables.
        sequences: the slice's per-id embeddings of each collection of a user's `EmbeddingCollection`s
            (`lookup_slice`), if the elastic EBC has any.
    """

    def __init__(
        self,
        build_model: Callable[[nn.Module], nn.Module],
        configs: list[EmbeddingBagConfig],
        candidates: Sequence[Any],
        pooled: dict[str, torch.Tensor],
        dense: torch.Tensor,
        labels: torch.Tensor,
        dense_state: dict[str, torch.Tensor],
        sequences: Sequences | None = None,
    ) -> None:
        self.build_model = build_model
        self.configs = configs
        self.candidates = [c if isinstance(c, int) else (int(c[0]), str(c[1])) for c in candidates]
        self.options = [(c, "fp32") if isinstance(c, int) else c for c in self.candidates]
        self.pooled, self.dense, self.labels, self.dense_state = pooled, dense, labels, dense_state
        self.sequences = sequences or {}
        self.model = build_model(_CachedLookup(configs, pooled))
        self.elastic = find_elastic(self.model)
        for name, jagged in self.sequences.items():
            self.elastic.set_collection(name, _CachedSequence(self.elastic.sequence_configs(name), jagged))
        self.model.load_state_dict(dense_state)
        self.model.eval()
        self.table_names = self.elastic.table_names
        self._cache: dict[tuple[int, ...], tuple[float, float, float]] = {}
        self._kept: dict[tuple[int, ...], torch.Tensor] = {}
        self._placed: dict[tuple[tuple[int, ...], str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.evaluations = 0
        self._choice_lookup: _ChoiceLookup | None = None
        if self.elastic.output_dim is not None and hasattr(self.model, "dense_arch"):
            self._precompute()

    @torch.no_grad()
    def _precompute(self) -> None:
        """Replaces the elastic EBC and the dense arch by their outputs on the slice (see the class doc)."""
        elastic = self.elastic
        num_tables = len(self.table_names)
        outputs: list[list[torch.Tensor | None]] = [[] for _ in elastic.feature_names]
        for d, data_type in self.options:
            elastic.set_dims([d] * num_tables)
            elastic.set_half([data_type == "fp16"] * num_tables)
            per_feature = elastic(None).to_dict()
            for i, name in enumerate(elastic.feature_names):
                outputs[i].append(per_feature[name].contiguous() if d > 0 else None)  # d = 0: zeroed
        table_index = {name: t for t, name in enumerate(self.table_names)}
        table_of_feature = [
            table_index[c.name] for c in elastic.embedding_bag_configs() for _ in c.feature_names
        ]
        # With frequency blocks the elastic EBC sits inside a per-feature pooling: stand in for both.
        pooling: nn.Module = _parent(self.model, elastic)
        if isinstance(pooling, FeatureGroups):
            index = {name: i for i, name in enumerate(elastic.feature_names)}
            groups = [[index[k] for k in keys] for _, keys in pooling.groups]
            configs, replaced = pooling.embedding_bag_configs(), pooling
        else:
            groups, configs, replaced = None, elastic.embedding_bag_configs(), elastic  # type: ignore[assignment]
        width = int(elastic.output_dim or 0)
        self._choice_lookup = _ChoiceLookup(configs, table_of_feature, outputs, width, groups)
        _replace_module(self.model, replaced, self._choice_lookup)
        dense_arch: nn.Module = self.model.dense_arch  # type: ignore[assignment]
        self.model.dense_arch = _Constant(dense_arch(self.dense))

    @torch.no_grad()
    def auc(self, choice: Sequence[int]) -> float:
        """Val-slice AUC of the architecture with candidate index `choice[f]` per table (-1 = table zeroed;
        memoised)."""
        return self._scores(choice)[0]

    def score(self, choice: Sequence[int], part: str = "all") -> float:
        """AUC on `part` of the slice: "all", "select" (even rows) or "confirm" (odd rows) -- two
        independent halves for select-then-confirm decisions (memoised)."""
        return self._scores(choice)[PARTS.index(part)]

    def compare(self, a: Sequence[int], b: Sequence[int], part: str = "all") -> tuple[float, float]:
        """AUC(b) - AUC(a) on `part` and the standard error of that paired difference (DeLong)."""
        return placement_difference(self._placements(a, part), self._placements(b, part))

    def _placements(self, choice: Sequence[int], part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """DeLong's components of `choice` on `part`, kept like the logits (bounded)."""
        key = (tuple(int(k) for k in choice), part)
        if key not in self._placed:
            if len(self._placed) >= KEEP_LOGITS:
                self._placed.pop(next(iter(self._placed)))
            rows = _rows(part)
            self._placed[key] = placements(self._logits(choice)[rows], self.labels[rows])
        return self._placed[key]

    @torch.no_grad()
    def _forward(self, key: tuple[int, ...]) -> torch.Tensor:
        if self._choice_lookup is not None:
            self._choice_lookup.choice = list(key)
        else:
            self.elastic.set_dims([self.options[k][0] if k >= 0 else 0 for k in key])
            self.elastic.set_half([k >= 0 and self.options[k][1] == "fp16" for k in key])
        self.evaluations += 1
        return self.model(self.dense, None)  # [N]

    def _logits(self, choice: Sequence[int]) -> torch.Tensor:
        """[N] logits of `choice` on the slice, kept for the architectures that are compared (the budget
        step's, a few hundred) rather than for every scored one."""
        key = tuple(int(k) for k in choice)
        if key not in self._kept:
            if len(self._kept) >= KEEP_LOGITS:  # bounded memory: drop the oldest
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = self._forward(key)
        return self._kept[key]

    def _scores(self, choice: Sequence[int]) -> tuple[float, float, float]:
        """(AUC on the slice, on its even rows, on its odd rows) of `choice`; one forward pass."""
        key = tuple(int(k) for k in choice)
        if key not in self._cache:
            logits = self._kept[key] if key in self._kept else self._forward(key)
            self._cache[key] = (
                binary_auc(logits, self.labels),
                binary_auc(logits[0::2], self.labels[0::2]),
                binary_auc(logits[1::2], self.labels[1::2]),
            )
        return self._cache[key]

    def scored(self) -> list[tuple[tuple[int, ...], tuple[float, float, float]]]:
        """Every architecture scored so far (no table zeroed) with its (AUC, even-half, odd-half AUC)."""
        return [(key, v) for key, v in self._cache.items() if min(key) >= 0]

    def panel_auc(self, seed: int, size: int = 8) -> float:
        """Mean AUC over a fixed panel: all-smallest, all-largest and `size - 2` random architectures.

        How the supernet's epochs are compared (early stopping): the search needs every subnet to be good,
        not only the all-largest one.
        """
        num_tables, k = len(self.table_names), len(self.candidates)
        g = torch.Generator().manual_seed(seed)
        panel = [[0] * num_tables, [k - 1] * num_tables]
        panel += torch.randint(0, k, (max(size - 2, 0), num_tables), generator=g).tolist()
        return sum(self.auc(c) for c in panel) / len(panel)

    def state_dict(self) -> dict[str, Any]:
        """What rebuilds this evaluator (`from_state`): the slice's pooled lookups, dense features and
        labels, and the dense weights (a method saves it with its run's identity)."""
        return {
            "pooled": self.pooled,
            "dense": self.dense,
            "labels": self.labels,
            "dense_state": self.dense_state,
            "candidates": self.candidates,
            "sequences": self.sequences,
        }

    @classmethod
    def from_state(
        cls,
        blob: dict[str, Any],
        build_model: Callable[[nn.Module], nn.Module],
        configs: list[EmbeddingBagConfig],
    ) -> SupernetEvaluator:
        return cls(
            build_model,
            configs,
            blob["candidates"],
            blob["pooled"],
            blob["dense"],
            blob["labels"],
            blob["dense_state"],
            blob.get("sequences"),
        )


def _parent(model: nn.Module, child: nn.Module) -> nn.Module:
    """The module of `model` that holds `child`."""
    for parent in model.modules():
        if any(c is child for c in parent.children()):
            return parent
    raise ValueError("the module is not in the model")


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Puts `new` where `old` sits in `model`."""
    parent = _parent(model, old)
    name = next(n for n, c in parent.named_children() if c is old)
    setattr(parent, name, new)


@torch.no_grad()
def lookup_slice(
    model: nn.Module, data: Rows, keys: list[str], batch_size: int, env: DistEnv
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, Sequences]:
    """The pooled d_max embeddings of `data` (a fixed slice) looked up through the sharded tables of a
    (DMP-wrapped) supernet holding one elastic EBC, with the rows' dense features and labels, gathered on
    every rank (a collective): (feature -> [N, d_max], dense [N, num_dense], labels [N], and the per-id
    d_max embeddings of each collection of its `EmbeddingCollection`s, {} without), rows in the same order
    in all (each rank's share, in rank order).
    """
    elastic = find_elastic(model)
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in elastic.feature_names}
    per_id: dict[str, dict[str, tuple[list, list]]] = {name: {} for name in elastic.collection_names}
    dense, labels = [], []
    for batch in data.batches(keys, batch_size, env.rank, env.world_size):
        kjt = batch.sparse_features.to(env.device)
        pooled = elastic.ebc(kjt).to_dict()
        for n in parts:
            parts[n].append(pooled[n].cpu())
        for name in elastic.collection_names:
            for key, jt in elastic.collection(name)(kjt).items():
                values, lengths = per_id[name].setdefault(key, ([], []))
                values.append(jt.values().cpu())
                lengths.append(jt.lengths().cpu())
        dense.append(batch.dense_features.float())
        labels.append(batch.labels.float())
    local = torch.stack([torch.cat(parts[n]) for n in elastic.feature_names], dim=1)  # [N_r, F, d]
    local_dense, local_labels = torch.cat(dense), torch.cat(labels)
    if env.world_size > 1:  # every rank holds the same number of rows (`Rows.batches`)
        gathered = []
        for t in (local, local_dense, local_labels):
            out = [torch.empty_like(t) for _ in range(env.world_size)]
            dist.all_gather(out, t.contiguous())
            gathered.append(torch.cat(out))
        local, local_dense, local_labels = gathered
    sequences = _gather_sequences(per_id, env) if per_id else {}
    model.train()
    pooled_slice = {name: local[:, i].contiguous() for i, name in enumerate(elastic.feature_names)}
    return pooled_slice, local_dense, local_labels, sequences


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of the model inside a DMP-wrapped `CTRModule` without its embedding tables (CPU copies)."""
    prefix = "model."
    return {
        k[len(prefix) :]: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if ".ebc." not in k and ".ecs." not in k and k.startswith(prefix)
    }


def _gather_sequences(local: dict[str, dict[str, tuple[list, list]]], env: DistEnv) -> Sequences:
    """Every rank's per-id embeddings of the slice, in rank order (ranks hold different numbers of ids:
    gathered as objects)."""
    mine = {
        name: {k: (torch.cat(v), torch.cat(n)) for k, (v, n) in per.items()} for name, per in local.items()
    }
    parts = [mine]
    if env.world_size > 1:
        parts = [{} for _ in range(env.world_size)]
        dist.all_gather_object(parts, mine)
    return {
        name: {
            k: (torch.cat([p[name][k][0] for p in parts]), torch.cat([p[name][k][1] for p in parts]))
            for k in mine[name]
        }
        for name in mine
    }


@torch.no_grad()
def slice_evaluator(
    model: nn.Module,
    data: Rows,
    keys: list[str],
    batch_size: int,
    env: DistEnv,
    build_model: Callable[[nn.Module], nn.Module],
    candidates: Sequence[Any],
) -> SupernetEvaluator | None:
    """Looks `data` (the fixed slice) up through the sharded tables of a (DMP-wrapped) supernet on all
    ranks and gathers it; rank 0 gets the evaluator, the other ranks None (a collective).

    Args:
        model: the DMP-wrapped training module holding one elastic EBC.
        data: the slice's rows, restricted to `keys`' columns.
        keys: the features, in the EBC's order.
        batch_size: rows per lookup per rank.
        env: the process group.
        build_model: `lookup -> model` for the evaluator (see `SupernetEvaluator`).
        candidates: the options a choice indexes (see `SupernetEvaluator`).
    """
    pooled_slice, dense, labels, sequences = lookup_slice(model, data, keys, batch_size, env)
    state = dense_state(model)
    if not env.is_main:
        return None
    return SupernetEvaluator(
        build_model,
        find_elastic(model).table_configs(),
        candidates,
        pooled_slice,
        dense,
        labels,
        state,
        sequences,
    )
