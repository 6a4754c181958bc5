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
    """

    name: str
    num_embeddings: int
    pooling: str = "sum"


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
        for f in data["sparse"]:  # sum pooling is left out, so one-hot schemas keep their hashes
            if f["pooling"] == "sum":
                del f["pooling"]
        return data

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
