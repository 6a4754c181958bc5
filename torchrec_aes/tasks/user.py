"""A user's own model and data: the task behind `torchrec_aes.search_embedding_dims`.

The user brings what a TorchRec training script already has: the `EmbeddingBagConfig`s of one
`EmbeddingBagCollection`, a factory building their model around an EBC, and iterables of
`torchrec.datasets.utils.Batch` (one loader per rank, as in TorchRec pipelines). `UserTask` trains and
measures that model with the one `Trainer` like any CTR task (binary labels, AUC), so AdaS&S and the
baselines search it unchanged; during the AdaS&S supernet the factory gets the elastic EBC instead.

Contract of the user's parts:

* `model_factory(ebc) -> nn.Module` with `forward(dense_features [B, num_dense], kjt) -> logits [B]` (or
  [B, 1]). It must read the tables' dims from `ebc.embedding_bag_configs()` (they differ per table after
  the search) and pooled embeddings by feature name from `ebc(kjt)` (a `KeyedTensor`); it must pass the
  KJT to the EBC untouched (the supernet's scorer replays cached lookups and calls the model with
  `kjt=None`) and be `torch.fx`-traceable like any model under `TrainPipelineSparseDist`. The tables it
  gets are named `t_<feature>` (the search's names); use feature names, not table names.
* With several modules (`tables={name: configs}`) the factory gets `{name: module}`: an EBC's view of the
  search's one EBC (as above), or for a list of `EmbeddingConfig`s an `EmbeddingCollection` (in a supernet
  a `SequenceView` of the elastic EBC) that the model keeps as a submodule and calls with the KJT.
* `loss(logits [B], labels [B]) -> scalar`, default binary cross-entropy on logits.
* Each split is re-iterable (a list, a `DataLoader`, an `IterableDataset`; not a generator) of `Batch`es,
  or of `(kjt, labels)` / `(dense, kjt, labels)` tuples. Shuffling and sharding by rank are the loader's
  job: every rank passes its own share, with the same number of batches and rows per batch on every rank
  (lookups are collectives). Labels are [B] in [0, 1] (AUC scores the search).

Example::

    task = UserTask(cfg, tables, lambda ebc: TwoTower(ebc), train_batches, val_batches)
    result = Trainer(cfg, task, Architecture.uniform(task.schema, 16)).fit()
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import BaseEmbeddingConfig, EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config
from torchrec_aes.data.dataset import Splits
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection
from torchrec_aes.tasks.ctr import CTRTask, ExtraLoss
from torchrec_aes.train.distributed import DistEnv, init_distributed

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelFactory = Callable[[Any], nn.Module]
"""`ebc -> model`, or `{module name: EBC or EC} -> model` for a model of several embedding modules."""


# ---------------------------------------------------------------------------------------------------------
# Data: the user's iterables behind the `Rows` interface
# ---------------------------------------------------------------------------------------------------------


def _as_batch(item: Any, where: str) -> Batch:
    """A `Batch` (float dense and labels) from a Batch or a `(kjt, labels)` / `(dense, kjt, labels)` tuple."""
    if isinstance(item, Batch):
        dense, kjt, labels = item.dense_features, item.sparse_features, item.labels
    elif isinstance(item, tuple | list) and len(item) in (2, 3):
        dense, kjt, labels = (None, *item) if len(item) == 2 else item
    else:
        raise ValueError(
            f"{where}: got a {type(item).__name__}; expected a torchrec.datasets.utils.Batch or a "
            "(kjt, labels) / (dense, kjt, labels) tuple"
        )
    if not isinstance(kjt, KeyedJaggedTensor):
        raise ValueError(f"{where}: sparse features are a {type(kjt).__name__}; expected a KeyedJaggedTensor")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != kjt.stride():
        shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{where}: labels of shape {shape}; expected [B] = [{kjt.stride()}] (one per row)")
    if dense is None:
        dense = torch.zeros(kjt.stride(), 0)
    if not isinstance(dense, torch.Tensor) or dense.dim() != 2 or dense.shape[0] != kjt.stride():
        shape = list(dense.shape) if isinstance(dense, torch.Tensor) else type(dense).__name__
        raise ValueError(
            f"{where}: dense features of shape {shape}; expected [B, num_dense] with B = {kjt.stride()}"
        )
    return Batch(dense_features=dense.float(), sparse_features=kjt, labels=labels.float())


class BatchRows:
    """One split as the user's own iterable of batches (the `Rows` interface over it).

    `batches()` iterates the iterable afresh each time; `rank`, `world_size`, `shuffle`, `seed` and
    `batch_size` are ignored (the user's per-rank loader decides them); `max_batches` is respected. The
    length (rows) and batch count take one pass, once, when first asked. `head(n)` keeps the first batches
    covering n rows (n / world_size per rank) in memory, so a search's scoring slice is fixed.

    Args:
        source: a re-iterable of `Batch`es or tuples (see the module doc).
        name: the split's name, for messages ("train", "val", "test").
        keys: the tables' feature names; every batch's KJT must have exactly these keys.
        world_size: ranks (each passes its own loader).
    """

    def __init__(
        self,
        source: Iterable[Any],
        name: str,
        keys: Sequence[str],
        world_size: int = 1,
        rows: dict[str, int] | None = None,
    ) -> None:
        if isinstance(source, Iterator):
            raise ValueError(
                f"{name}: a {type(source).__name__} can be read only once; pass a re-iterable (a list, a "
                "DataLoader, an IterableDataset), since every epoch and evaluation reads the split again"
            )
        self.source, self.name, self.keys, self.world_size = source, name, list(keys), world_size
        self.rows = rows
        self._count: tuple[int, int] | None = None  # (batches, rows)

    def _batch(self, item: Any, i: int) -> Batch:
        """Batch `i` of the source, checked: its keys, labels in [0, 1] and ids within their tables (on
        every batch, as it is read: a bad value later in a split would train silently wrong)."""
        where = f"{self.name} batch {i}"
        batch = _as_batch(item, where)
        if batch.sparse_features.keys() != self.keys:
            have = batch.sparse_features.keys()
            if set(have) != set(self.keys):
                missing, extra = sorted(set(self.keys) - set(have)), sorted(set(have) - set(self.keys))
                raise ValueError(
                    f"{where}: KJT keys {have} do not match the tables' feature names "
                    f"{self.keys} (missing: {missing or 'none'}; not in any table: {extra or 'none'})"
                )
        labels = batch.labels
        if labels.numel() and not bool(((labels >= 0) & (labels <= 1)).all()):  # NaN fails both
            bad = labels[~((labels >= 0) & (labels <= 1))][0]
            raise ValueError(
                f"{where}: label {float(bad)}; expected binary labels in [0, 1] (the search scores by AUC)"
            )
        if self.rows is not None:
            for key, jt in batch.sparse_features.to_dict().items():
                ids = jt.values()
                if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.rows[key]):
                    raise ValueError(
                        f"{where}: feature '{key}' has ids in [{int(ids.min())}, {int(ids.max())}] "
                        f"but its table has {self.rows[key]} rows (num_embeddings)"
                    )
        return batch

    def count(self) -> tuple[int, int]:
        """(batches, rows) of this rank's iterable (one pass, cached)."""
        if self._count is None:
            batches = rows = 0
            for i, item in enumerate(self.source):
                rows += self._batch(item, i).labels.shape[0]
                batches += 1
            self._count = (batches, rows)
        return self._count

    def first(self) -> Batch:
        """The first batch (a ValueError names an empty split)."""
        for item in self.source:
            return self._batch(item, 0)
        raise ValueError(f"{self.name}: no batches")

    def __len__(self) -> int:
        return self.count()[1]

    def batches(
        self,
        keys: list[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int = 0,
    ) -> Iterator[Batch]:
        """This rank's batches from the user's iterable, with KJTs restricted and ordered to `keys`."""
        for i, item in enumerate(self.source):
            if max_batches and i >= max_batches:
                return
            batch = self._batch(item, i)
            kjt = batch.sparse_features
            if kjt.keys() != keys:
                index = {k: j for j, k in enumerate(kjt.keys())}
                kjt = kjt.permute([index[k] for k in keys])
                batch = Batch(batch.dense_features, kjt, batch.labels)
            yield batch

    def head(self, n: int) -> BatchRows:
        """The first whole batches covering `n` rows over all ranks (n / world_size on this rank), cached
        in memory; all of them if the split is shorter."""
        per_rank = math.ceil(n / self.world_size)
        kept: list[Batch] = []
        rows = 0
        for i, item in enumerate(self.source):
            if rows >= per_rank:
                break
            kept.append(self._batch(item, i))
            rows += kept[-1].labels.shape[0]
        return BatchRows(kept, self.name, self.keys, self.world_size)

    def select(self, columns: list[int]) -> BatchRows:
        """The same rows: `batches(keys)` restricts each KJT to the keys it is asked for."""
        return self


# ---------------------------------------------------------------------------------------------------------
# Model: the user's model behind `CTRTask`'s (batch -> (loss, (loss, logits, labels))) contract
# ---------------------------------------------------------------------------------------------------------


class Logits(nn.Module):
    """The user's model with its logits flattened to [B] (TorchRec's DLRM returns [B, 1]).

    Args:
        model: `(dense [B, num_dense], kjt) -> logits [B] or [B, 1]`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        logits = self.model(dense_features, sparse_features)
        # No Python branch on the shape: the train pipeline traces this with torch.fx.
        return logits.reshape(logits.shape[0])


class PooledReplay(nn.Module):
    """An EBC look-alike over tables looked up elsewhere: its configs, and as output the pooled embeddings
    last given to `replay` (the KJT it is called with is ignored; the user's model passes None)."""

    def __init__(self, configs: list[EmbeddingBagConfig]) -> None:
        super().__init__()
        self._configs = list(configs)
        self.keys = [n for c in configs for n in c.feature_names]
        self.pooled: KeyedTensor | None = None

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)

    def replay(self, per_feature: dict[str, torch.Tensor] | None) -> None:
        """Holds these pooled embeddings as the output (None: holds nothing)."""
        if per_feature is None:
            self.pooled = None
            return
        self.pooled = KeyedTensor.from_tensor_list(self.keys, [per_feature[k] for k in self.keys])

    def forward(self, features: Any) -> KeyedTensor:
        assert self.pooled is not None, "PooledReplay called before replay()"
        return self.pooled


class UserHead(nn.Module):
    """The user's model over tables looked up elsewhere: `interact(dense, {feature: pooled}, kjt)` runs it
    on pooled embeddings replayed through `PooledReplay`s (one per EBC of the user's model, which it gets
    as the factory's argument: the EBC, or with several a dict of them by name). One group's head of iHAS;
    also how a model of several EBCs runs over the search's one EBC (`SeveralEBCs`).

    Args:
        model_factory: the user's factory.
        configs: the tables the head sees.
        ebc_features: None (one EBC), or {EBC name: its features} for a model of several EBCs.
        sequences: {EC name: the module the model gets for it} (an `EmbeddingCollection`, or a
            `SequenceView` in a supernet); the model holds them and calls them with the KJT.
    """

    def __init__(
        self,
        model_factory: ModelFactory,
        configs: list[EmbeddingBagConfig],
        ebc_features: dict[str, list[str]] | None = None,
        sequences: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        everything = {"ebc": [n for c in configs for n in c.feature_names]}
        groups = ebc_features if ebc_features is not None else everything
        # A list, not a ModuleDict: the user's EBC names may be any name ("items", "keys", ...).
        self.views = nn.ModuleList(
            PooledReplay([c for c in configs if set(c.feature_names) <= set(features)])
            for features in groups.values()
        )
        modules = {**dict(zip(groups, self.views, strict=True)), **dict(sequences or {})}
        self.model = Logits(model_factory(self.views[0] if ebc_features is None else modules))

    def interact(
        self,
        dense_features: torch.Tensor,
        per_feature: dict[str, torch.Tensor],
        features: KeyedJaggedTensor | None = None,
    ) -> torch.Tensor:
        """Logits [B] from the pooled embeddings (and `features` for the model's `EmbeddingCollection`s)."""
        for view in self.views:
            view.replay(per_feature)  # type: ignore[operator]
        try:
            return self.model(dense_features, features)
        finally:  # the batch's embeddings are not kept on the module past the call
            for view in self.views:
                view.replay(None)  # type: ignore[operator]


def replayed_logits(
    head: UserHead,
    dense_features: torch.Tensor,
    pooled: KeyedTensor,
    features: KeyedJaggedTensor | None = None,
) -> torch.Tensor:
    """[B] the head on the pooled embeddings (and the batch's KJT for its `EmbeddingCollection`s)."""
    return head.interact(dense_features, pooled.to_dict(), features)


# The replay stores tensors on modules: a leaf for torch.fx, which TorchRec's train pipeline traces with.
torch.fx.wrap("replayed_logits")


class SeveralEBCs(nn.Module):
    """A user's model of several embedding modules over the search's one EBC of all their pooled tables:
    one lookup per step, its pooled embeddings replayed to each of the model's EBCs (`UserHead`); the
    model's `EmbeddingCollection`s are its own (it is given them, holds them and looks them up with the
    batch's KJT).

    Args:
        sparse: the one EBC (or a look-alike: elastic, gated).
        model_factory: the user's factory, called with {EBC name: its view, EC name: its module}.
        ebc_features: {EBC name: its features}.
        sequences: {EC name: an `EmbeddingCollection`, or a `SequenceView` of an elastic EBC}.
    """

    def __init__(
        self,
        sparse: nn.Module,
        model_factory: ModelFactory,
        ebc_features: dict[str, list[str]],
        sequences: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.sparse = sparse
        configs = sparse.embedding_bag_configs()  # type: ignore[operator]
        self.head = UserHead(model_factory, configs, ebc_features, sequences)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return replayed_logits(self.head, dense_features, self.sparse(sparse_features), sparse_features)


class UserHeads:
    """Builds the user's model as the heads of a grouped model (`Task.head`), holding only the factory."""

    def __init__(self, model_factory: ModelFactory, ebc_features: dict[str, list[str]] | None = None) -> None:
        self.model_factory, self.ebc_features = model_factory, ebc_features

    def head(self, configs: list[EmbeddingBagConfig]) -> nn.Module:
        return UserHead(self.model_factory, configs, self.ebc_features)


class UserModule(nn.Module):
    """What DMP wraps for a user's model: batch -> (loss, (loss, logits, labels)), the shape TorchRec's
    `TrainPipelineSparseDist` expects.

    Args:
        model: `Logits` around the user's model.
        loss: `(logits [B], labels [B]) -> scalar`.
        extra_loss: optional `(batch, logits) -> scalar` added in training (a search's regularisers).
    """

    def __init__(self, model: nn.Module, loss: Loss, extra_loss: ExtraLoss | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.extra_loss = extra_loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = self.loss(logits, batch.labels)
        if self.extra_loss is not None and self.training:
            extra = self.extra_loss(batch, logits)
            if extra is not None:
                loss = loss + extra
        return loss, (loss.detach(), logits.detach(), batch.labels)


def flatten_tables(
    tables: Sequence[EmbeddingBagConfig] | Mapping[str, Sequence[BaseEmbeddingConfig]],
) -> tuple[list[BaseEmbeddingConfig], dict[str, list[str]] | None, dict[str, list[str]]]:
    """The tables of one EBC as given, or of several modules ({module name: its configs}: a list of
    `EmbeddingBagConfig`s is an EBC, of `EmbeddingConfig`s an `EmbeddingCollection`) in one list, pooled
    tables first, with each EBC's features ({name: features}; None for one EBC) and each EC's. Checked by
    `check_tables`.

    Raises:
        ValueError: a mapping that is empty, whose keys are not names, a module mixing both kinds of
            config, or ECs without any EBC, naming what is wrong.
    """
    if not isinstance(tables, Mapping):
        check_tables(tables)
        return list(tables), None, {}
    if not tables:
        raise ValueError("tables: an empty mapping; give {EBC name: its EmbeddingBagConfigs}")
    pooled: list[BaseEmbeddingConfig] = []
    sequence: list[BaseEmbeddingConfig] = []
    features: dict[str, list[str]] = {}
    collections: dict[str, list[str]] = {}
    for name, configs in tables.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"tables: module name {name!r}; expected a non-empty name without '.'")
        if isinstance(configs, BaseEmbeddingConfig) or not configs:
            raise ValueError(f"tables['{name}']: expected a non-empty list of EmbeddingBagConfigs")
        if all(isinstance(c, EmbeddingConfig) for c in configs):
            sequence.extend(configs)
            collections[name] = [n for c in configs for n in c.feature_names]
            continue
        check_tables(list(configs), sequences=True)  # names a config that is neither kind
        if not all(isinstance(c, EmbeddingBagConfig) for c in configs):
            raise ValueError(
                f"tables['{name}']: mixes EmbeddingBagConfigs and EmbeddingConfigs; one module's tables are "
                "all EmbeddingBagConfigs (an EmbeddingBagCollection) or all EmbeddingConfigs (an "
                "EmbeddingCollection)"
            )
        pooled.extend(configs)
        features[name] = [n for c in configs for n in c.feature_names]
    if not pooled:
        raise ValueError(
            "tables: only EmbeddingCollections; the search needs at least one EmbeddingBagCollection of "
            "pooled tables in the model"
        )
    flat = pooled + sequence
    check_tables(flat, sequences=True)
    return flat, features, collections


def check_tables(tables: Sequence[BaseEmbeddingConfig], sequences: bool = False) -> None:
    """Raises a one-line ValueError unless `tables` are `EmbeddingBagConfig`s (also `EmbeddingConfig`s
    with `sequences`) with unique names, each feature in one table (a table may serve several features: one
    shared table, one dim)."""
    if not tables:
        raise ValueError("tables: empty; give the EmbeddingBagConfigs of your EmbeddingBagCollection")
    names: set[str] = set()
    features: dict[str, str] = {}
    for i, t in enumerate(tables):
        if isinstance(t, EmbeddingConfig) and not sequences:
            raise ValueError(
                f"tables[{i}]: an EmbeddingConfig (an EmbeddingCollection's table); give a model's modules "
                "as a mapping {module name: its configs}, e.g. {'ebc': [EmbeddingBagConfig, ...], 'seq': "
                "[EmbeddingConfig, ...]}"
            )
        if not isinstance(t, EmbeddingBagConfig | EmbeddingConfig):
            expected = "EmbeddingBagConfig or EmbeddingConfig" if sequences else "EmbeddingBagConfig"
            raise ValueError(f"tables[{i}]: a {type(t).__name__}; expected a torchrec {expected}")
        if not t.feature_names:
            raise ValueError(f"table '{t.name}' looks up no feature; give it feature_names")
        if t.name in names:
            raise ValueError(f"tables: the name '{t.name}' is used twice")
        for feature in t.feature_names:
            if feature in features:
                raise ValueError(
                    f"tables: feature '{feature}' is in tables '{features[feature]}' and '{t.name}'"
                )
            features[feature] = t.name
        if t.num_embeddings <= 0:
            raise ValueError(f"table '{t.name}': num_embeddings {t.num_embeddings}; expected > 0")
        names.add(t.name)


def module_path_of(model: nn.Module, ebc: nn.Module) -> str:
    """Where `model` holds `ebc` (a dotted submodule path); a one-line error if it does not."""
    for name, m in model.named_modules():
        if m is ebc:
            return name
    raise ValueError(
        "model_factory: the model it returns does not hold the EmbeddingBagCollection it was given as a "
        "submodule; keep the EBC passed in (e.g. `self.ebc = ebc`) so that DMP can shard it"
    )


class UserTask(CTRTask):
    """A CTR task over the user's tables, model factory, loss and batches (see the module doc).

    Its name is `ctr` (binary labels, AUC), so the CTR search methods accept it; it is not in the task
    registry (`data.type` never selects it: only the Python API builds it).

    Args:
        cfg: the run config (`train`, `search`; `data` and `model` are not used).
        tables: the user's `EmbeddingBagConfig`s (the schema, in this order; a table of several features
            is one shared table), or {EBC name: configs} for a model of several EBCs.
        model_factory: `ebc -> model` (see the module doc).
        train: this rank's training batches.
        val: this rank's validation batches (scoring slices are their first rows).
        test: this rank's test batches; None uses `val` (the reported test metrics are then validation's).
        loss: `(logits [B], labels [B]) -> scalar`; None = binary cross-entropy on logits.
        train_steps_per_epoch: steps per epoch; 0 counts this rank's train batches once. Either way the
            minimum over ranks is used, so every rank runs the same number of steps.

    Raises:
        ValueError: bad tables, a factory whose model does not hold the EBC, a split that is empty, read
            once only, or whose first batch does not match the tables (keys, ids, label shape).
    """

    name = "ctr"
    model_types = ()  # type: ignore[assignment]  # no `model.type`: the model is the user's
    ebc_path = "model.model"  # + the EBC's path in the user's model (set per instance)
    remaps_ids = False  # the user's model looks its tables up itself

    def __init__(
        self,
        cfg: Config,
        tables: Sequence[EmbeddingBagConfig] | Mapping[str, Sequence[EmbeddingBagConfig]],
        model_factory: ModelFactory,
        train: Iterable[Any],
        val: Iterable[Any],
        test: Iterable[Any] | None = None,
        loss: Loss | None = None,
        train_steps_per_epoch: int = 0,
    ) -> None:
        flat, self.ebc_features, self.collections = flatten_tables(tables)
        if not callable(model_factory):
            raise ValueError(
                f"model_factory: a {type(model_factory).__name__}; expected a callable ebc -> model"
            )
        if loss is not None and not callable(loss):
            raise ValueError(f"loss: a {type(loss).__name__}; expected a callable (logits, labels) -> loss")
        if train_steps_per_epoch < 0:
            raise ValueError(f"train_steps_per_epoch: {train_steps_per_epoch}; expected >= 0 (0 = count)")
        self.tables = flat
        self.user_factory = model_factory
        self.loss: Loss = loss if loss is not None else F.binary_cross_entropy_with_logits
        self.train_steps = train_steps_per_epoch
        self._steps: int | None = None
        env = init_distributed()
        keys = [n for t in self.tables for n in t.feature_names]
        rows = {n: t.num_embeddings for t in self.tables for n in t.feature_names}
        splits = {
            name: BatchRows(src, name, keys, env.world_size, rows)
            for name, src in (("train", train), ("val", val), ("test", val if test is None else test))
        }
        num_dense = self._check_first_batches(splits)
        collection_of = {n: name for name, features in self.collections.items() for n in features}
        schema = Schema(
            dense_names=[f"dense_{i}" for i in range(num_dense)],
            # A table of several features is a shared table (searched as one, `t_<its name>`).
            # A table of an EmbeddingCollection is in its collection (one dim for the collection's tables).
            sparse=[
                SparseFeature(
                    n,
                    t.num_embeddings,
                    table=t.name if len(t.feature_names) > 1 else "",
                    collection=collection_of.get(n, ""),
                )
                for t in self.tables
                for n in t.feature_names
            ],
        )
        data = Splits(schema, *(splits[s] for s in ("train", "val", "test")))
        super().__init__(cfg, data)
        # The factory once on meta: fails fast on a broken factory and finds where the user keeps the EBC.
        configs = Architecture.uniform(self.schema, 4)
        probe = EmbeddingBagCollection(
            tables=self._user_configs(configs.to_ebc_configs()), device=torch.device("meta")
        )
        probe_ecs = self._collections(configs)
        # Where the one EBC sits in the model UserModule wraps: `Logits.model.<the user's path>`, or for
        # several EBCs `SeveralEBCs.sparse` (each of the user's EBCs is found when the result is exported).
        probed = self.model_around(probe, probe_ecs)
        inner = module_path_of(probed, probe)
        # Where each EmbeddingCollection sits in that model (the user keeps it; found on meta the same way).
        self.collection_paths = {
            name: f"model.{module_path_of(probed, ec)}" for name, ec in probe_ecs.items()
        }
        self.ebc_path = f"model.{inner}"  # type: ignore[misc]
        self.module_path = inner.removeprefix("model").removeprefix(".") if self.ebc_features is None else ""

    def _check_first_batches(self, splits: dict[str, BatchRows]) -> int:
        """num_dense of the first train batch; every split's first batch must match it (labels and ids are
        checked on every batch as read)."""
        num_dense = -1
        for name, split in splits.items():
            batch = split.first()
            if num_dense < 0:
                num_dense = batch.dense_features.shape[1]
            elif batch.dense_features.shape[1] != num_dense:
                raise ValueError(
                    f"{name} batch 0: {batch.dense_features.shape[1]} dense features; train has {num_dense}"
                )
        return num_dense

    @classmethod
    def load(cls, cfg: Config) -> UserTask:
        raise ValueError("a user task is built by the Python API (torchrec_aes.search_embedding_dims)")

    def _user_configs(self, configs: list[Any]) -> list[Any]:
        """The search's tables with the user's pooling (pooled tables) and init range (by feature)."""
        by_feature = {n: t for t in self.tables for n in t.feature_names}
        out = []
        for c in configs:
            user = by_feature[c.feature_names[0]]
            kept = {"weight_init_max": user.weight_init_max, "weight_init_min": user.weight_init_min}
            if isinstance(c, EmbeddingBagConfig) and isinstance(user, EmbeddingBagConfig):
                kept["pooling"] = user.pooling
            out.append(dataclasses.replace(c, **kept))
        return out

    def _collections(self, arch: Architecture) -> dict[str, EmbeddingCollection]:
        """The user's `EmbeddingCollection`s of `arch`'s sequence tables, on meta."""
        return {
            name: EmbeddingCollection(tables=self._user_configs(configs), device=torch.device("meta"))
            for name, configs in arch.to_ec_configs().items()
        }

    def model_around(self, sparse: nn.Module, sequences: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """The user's model around `sparse` (their EBC, or a look-alike: elastic, gated, replayed); a model
        of several modules gets its ECs as `sequences` and its EBCs as views of `sparse` (with one EBC,
        `sparse` itself: nothing to replay, and TorchRec's pipeline sees every lookup)."""
        if self.ebc_features is None:
            return Logits(self.user_factory(sparse))
        if len(self.ebc_features) == 1:
            (name,) = self.ebc_features
            return Logits(self.user_factory({name: sparse, **dict(sequences or {})}))
        return SeveralEBCs(sparse, self.user_factory, self.ebc_features, sequences)

    def head(self, configs: list[EmbeddingBagConfig]) -> nn.Module:
        """The user's model over tables looked up elsewhere (one group's head of iHAS)."""
        return UserHeads(self.user_factory, self.ebc_features).head(configs)

    def supernet_model(self, lookup: nn.Module, candidates: Sequence[int]) -> nn.Module:
        """The user's model around an elastic EBC over `lookup` (every table at max(candidates), zero-padded
        beyond the sampled dim), for AdaS&S's supernet and scorer; the user's `EmbeddingCollection`s are
        the elastic EBC's too (at max(candidates), one sampled dim per collection)."""
        ecs = self._collections(Architecture.uniform(self.schema, max(candidates)))
        elastic = ElasticEmbeddingBagCollection(lookup, candidates, sequences=ecs)
        return self.model_around(elastic, {name: elastic.sequence_view(name) for name in ecs})

    def ebc_path_for(self, arch: Architecture) -> str:
        return self.ebc_path  # the user's module path, whatever the architecture

    def collection_paths_for(self, arch: Architecture) -> dict[str, str]:
        return dict(self.collection_paths)

    def build(
        self,
        arch: Architecture,
        build_model: Callable[[EmbeddingBagCollection], nn.Module] | None = None,
        extra_loss: ExtraLoss | None = None,
    ) -> tuple[nn.Module, nn.Module]:
        # `BatchRows.batches` restricts every KJT to these keys (tables of dim 0 drop theirs).
        self.keys = [n for t in arch.active_tables for n in t.feature_names]
        arch.check_collections()
        ebc = EmbeddingBagCollection(
            tables=self._user_configs(arch.to_ebc_configs()), device=torch.device("meta")
        )
        model = (
            build_model(ebc) if build_model is not None else self.model_around(ebc, self._collections(arch))
        )
        # Every table gets the fused optimizer: the EBC's and the model's EmbeddingCollections (a supernet
        # builds its own, `supernet_model`).
        ecs = [m for m in model.modules() if isinstance(m, EmbeddingCollection)]
        return UserModule(model, self.loss, extra_loss), nn.ModuleList([ebc, *ecs]) if ecs else ebc

    def steps_per_epoch(self, env: DistEnv) -> int:
        if self._steps is None:
            train = cast(BatchRows, self.data.train)
            steps = self.train_steps or train.count()[0]
            if env.world_size > 1:
                t = torch.tensor([steps], dtype=torch.int64, device=env.device)
                dist.all_reduce(t, op=dist.ReduceOp.MIN)
                steps = int(t.item())
            if steps == 0:
                raise ValueError("train: no batches on at least one rank")
            self._steps = steps
        tc = self.cfg.train
        return min(self._steps, tc.max_steps) if tc.max_steps else self._steps
