"""The data schema: dense features, sparse features with their table sizes, and the label."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace


@dataclass
class SparseFeature:
    """One categorical feature and the rows of its table.

    Args:
        name: feature name (also the KJT key and the table's feature name).
        num_embeddings: rows of the table; ids are in [0, num_embeddings), id 0 is the field's OOV id
            when a vocabulary is built.
        pooling: how the feature's bag of ids is pooled, "sum" or "mean" (`data.pooling`; one id: either).
        table: the shared table it looks up (`data.shared_tables`), "" for its own table `t_<name>`.
        weighted: its ids carry weights (id-score lists, `data.weighted_columns`): pooled as a weighted sum.
        collection: the `EmbeddingCollection` of a user's model its table is in (a sequence feature: looked
            up per id, not pooled; the collection's tables share one dim), "" for a pooled table.
    """

    name: str
    num_embeddings: int
    pooling: str = "sum"
    table: str = ""
    weighted: bool = False
    collection: str = ""

    @property
    def table_key(self) -> str:
        """The name its table is known by (its own name, or the shared table's)."""
        return self.table or self.name


@dataclass
class Schema:
    """What a dataset looks like to a model.

    Args:
        dense_names: names of the dense features, in column order of `dense`.
        sparse: categorical features in column order of `sparse`.
        label: name of the label.
        task: "ctr" (binary label per row) or "cf" (user-item interactions).
    """

    dense_names: list[str] = field(default_factory=list)
    sparse: list[SparseFeature] = field(default_factory=list)
    label: str = "label"
    task: str = "ctr"

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def num_dense(self) -> int:
        return len(self.dense_names)

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"feature '{name}' is not in the schema (features: {', '.join(self.sparse_names)})")

    def to_dict(self) -> dict:
        data = asdict(self)
        for f in data["sparse"]:  # defaults are left out, so schemas from before these keys keep their hashes
            if f["pooling"] == "sum":
                del f["pooling"]
            if not f["table"]:
                del f["table"]
            if not f["weighted"]:
                del f["weighted"]
            if not f["collection"]:
                del f["collection"]
        return data

    @property
    def tables(self) -> list[tuple[str, list[str]]]:
        """[(table key, its features)] in order of first appearance: one per feature unless shared."""
        groups: dict[str, list[str]] = {}
        for f in self.sparse:
            groups.setdefault(f.table_key, []).append(f.name)
        return list(groups.items())

    @property
    def table_rows(self) -> list[int]:
        """Rows of each table of `tables` (features sharing a table share its rows)."""
        rows = {f.table_key: f.num_embeddings for f in self.sparse}
        return [rows[key] for key, _ in self.tables]

    @property
    def is_weighted(self) -> bool:
        """Whether any feature carries weights (the model's EBC is then a weighted one)."""
        return any(f.weighted for f in self.sparse)

    @property
    def has_sequences(self) -> bool:
        """Whether some tables are a user's `EmbeddingCollection`s (`SparseFeature.collection`)."""
        return any(f.collection for f in self.sparse)

    @property
    def has_shared_tables(self) -> bool:
        return any(f.table for f in self.sparse)

    def configured(self, pooling: dict[str, str], shared_tables: dict[str, list[str]]) -> Schema:
        """A copy with the data config's pooling and shared tables (`data.pooling`, `data.shared_tables`)."""
        schema = self.with_pooling(pooling) if pooling else self
        for f in schema.sparse:
            if f.weighted and f.pooling != "sum":
                raise ValueError(
                    f"data.pooling.{f.name}: a weighted feature (data.weighted_columns) pools by sum "
                    "(TorchRec's weighted EBC sums weight x embedding)"
                )
        return schema.with_shared_tables(shared_tables) if shared_tables else schema

    def with_shared_tables(self, shared: dict[str, list[str]], key: str = "data.shared_tables") -> Schema:
        """A copy in which the features of each entry of `shared` ({table: [feature, ...]}) look up one
        table with the largest of their id ranges (text readers have already given them one vocabulary).

        Raises:
            ValueError: an unknown feature, a feature in two tables, a table name that is another feature's,
                or features of one table pooled differently (the message names `key`).
        """
        owner: dict[str, str] = {}
        for table, names in shared.items():
            for name in names:
                if name not in self.sparse_names:
                    raise ValueError(
                        f"{key}.{table}: '{name}' is not a sparse feature of the data (features: "
                        f"{', '.join(self.sparse_names)})"
                    )
                if name in owner:
                    raise ValueError(
                        f"{key}: feature '{name}' is in two tables, '{owner[name]}' and '{table}'"
                    )
                owner[name] = table
            if table in self.sparse_names and table not in names:
                raise ValueError(f"{key}.{table}: the name is another feature's (its own table)")
            pooling = {self.feature(n).pooling for n in names}
            if len(pooling) > 1:
                raise ValueError(
                    f"{key}.{table}: its features pool differently ({', '.join(sorted(pooling))}); a "
                    "TorchRec table has one pooling (data.pooling)"
                )
        rows = {t: max(self.feature(n).num_embeddings for n in names) for t, names in shared.items()}
        sparse = [
            replace(f, table=owner[f.name], num_embeddings=rows[owner[f.name]]) if f.name in owner else f
            for f in self.sparse
        ]
        return replace(self, sparse=sparse)

    @property
    def pooling(self) -> dict[str, str]:
        """{feature: pooling} of every sparse feature."""
        return {f.name: f.pooling for f in self.sparse}

    def with_pooling(self, pooling: dict[str, str], key: str = "data.pooling") -> Schema:
        """A copy whose features pool as `pooling` says ({feature: sum | mean}; others keep theirs).

        Raises:
            ValueError: a feature the schema does not have (the message names `key`).
        """
        unknown = sorted(set(pooling) - set(self.sparse_names))
        if unknown:
            raise ValueError(
                f"{key}: '{unknown[0]}' is not a sparse feature of the data (features: "
                f"{', '.join(self.sparse_names)})"
            )
        sparse = [replace(f, pooling=pooling.get(f.name, f.pooling)) for f in self.sparse]
        return replace(self, sparse=sparse)

    @classmethod
    def from_dict(cls, data: dict) -> Schema:
        return cls(
            dense_names=list(data.get("dense_names", [])),
            sparse=[SparseFeature(**f) for f in data.get("sparse", [])],
            label=data.get("label", "label"),
            task=data.get("task", "ctr"),
        )

    def hash(self) -> str:
        """A short stable hash; architecture files record it to catch a mismatched dataset."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
