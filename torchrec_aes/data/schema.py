"""The data schema: dense features, sparse features with their table sizes, and the label."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass
class SparseFeature:
    """One categorical feature and the rows of its table.

    Args:
        name: feature name (also the KJT key and the table's feature name).
        num_embeddings: rows of the table; ids are in [0, num_embeddings), id 0 is the field's OOV id
            when a vocabulary is built.
    """

    name: str
    num_embeddings: int


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
        return asdict(self)

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
