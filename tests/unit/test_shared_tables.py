"""Tables shared by several features (`data.shared_tables`): one joint vocabulary for text data, one table
in the architecture (bytes counted once, one dim), the methods that search them and those that refuse."""

import pytest
import torch

from tests.helpers import tiny_config
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import DataConfig
from torchrec_aes.data.load import load_data
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.tasks.ctr import CTRTask


def _csv(tmp_path) -> str:
    rows = []
    for i in range(200):
        history = "|".join(f"i{(i + k) % 7}" for k in range(i % 4))  # 0-3 earlier items
        rows.append(f"{i % 2},{i},i{i % 5},{history},u{i % 11}")
    path = tmp_path / "history.csv"
    path.write_text("label,price,item_id,history,user\n" + "\n".join(rows) + "\n")
    return str(path)


def _config(path: str) -> DataConfig:
    return DataConfig(
        type="tabular",
        path=path,
        label_column="label",
        dense_columns=["price"],
        sparse_columns=["item_id", "history", "user"],
        multi_hot_columns=["history"],
        shared_tables={"item": ["item_id", "history"]},
        min_count=1,
    )


def test_text_features_of_a_shared_table_get_one_vocabulary_and_one_table(tmp_path):
    splits = load_data(_config(_csv(tmp_path)))
    schema = splits.schema
    assert schema.tables == [("item", ["item_id", "history"]), ("user", ["user"])]
    # item_id holds i0..i4, history i0..i6: one vocabulary of 7 items + OOV for both
    assert schema.feature("item_id").num_embeddings == schema.feature("history").num_embeddings == 8
    data = splits.train
    first_items = data.field_ids(0)
    bags = data.field_ids(1)
    assert set(first_items.tolist()) <= set(range(1, 8)) and set(bags.tolist()) <= set(range(1, 8))
    arch = Architecture.uniform(schema, 8)
    assert [(t.name, t.feature_names, t.num_embeddings) for t in arch.tables] == [
        ("t_item", ["item_id", "history"], 8),
        ("t_user", ["user"], 12),
    ]
    arch.check_schema(schema)
    with pytest.raises(ValueError, match="got 3 dims for 2 tables"):
        Architecture.from_dims(schema, [8, 8, 8])


def test_shared_table_bytes_are_counted_once():
    plain = Schema([], [SparseFeature("a", 1000), SparseFeature("b", 1000)])
    shared = plain.with_shared_tables({"ab": ["a", "b"]})
    one, two = (Budget.parse("1GB", s).used(Architecture.uniform(s, 16)) for s in (shared, plain))
    assert 1.9 * one < two < 2.1 * one


def test_shared_table_errors_name_the_key():
    schema = Schema([], [SparseFeature("a", 10), SparseFeature("b", 20, "mean"), SparseFeature("c", 5)])
    with pytest.raises(ValueError, match=r"data.shared_tables.t: 'x' is not a sparse feature"):
        schema.with_shared_tables({"t": ["a", "x"]})
    with pytest.raises(ValueError, match="feature 'a' is in two tables"):
        schema.with_shared_tables({"t": ["a", "c"], "u": ["a"]})
    with pytest.raises(ValueError, match="pool differently"):
        schema.with_shared_tables({"t": ["a", "b"]})
    with pytest.raises(ValueError, match="the name is another feature's"):
        schema.with_shared_tables({"c": ["a"]})
    assert schema.with_shared_tables({"ac": ["a", "c"]}).feature("c").num_embeddings == 10


def test_methods_that_do_not_search_shared_tables_refuse_before_they_start(tmp_path):
    splits = load_data(_config(_csv(tmp_path)))
    cfg = tiny_config()
    ctx = SearchContext(cfg, CTRTask(cfg, splits), Budget.parse("1MB", splits.schema))
    for name in ("uniform", "power_rule"):
        get_method(name).check_floor(ctx)
    assert get_method("adass").shared_tables
    with pytest.raises(ValueError, match="'ihas' does not search tables shared by several features"):
        get_method("ihas").check_floor(ctx)
    assert torch.equal(torch.tensor(splits.schema.table_rows), torch.tensor([8, 12]))
