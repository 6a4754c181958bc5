"""Memory accounting and budgets: bytes are TorchRec's storage estimate, budgets parse and bound them."""

from __future__ import annotations

import pytest

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.planning.memory import (
    Budget,
    arch_bytes,
    format_bytes,
    parse_bytes,
    table_bytes,
    table_storage,
    warm_cache,
)

# A few shapes from tiny to Criteo-1TB's largest table, with dims from 4 to 128 and one odd dim.
TABLES = [(3, 4), (1000, 16), (36746, 24), (1572176, 64), (45833188, 128), (7, 6)]


@pytest.fixture
def schema() -> Schema:
    return Schema(sparse=[SparseFeature(f"c{i}", n) for i, n in enumerate([10, 1000, 100_000, 7])])


@pytest.mark.parametrize(("rows", "dim"), TABLES)
def test_bytes_equal_torchrec_closed_forms_for_each_optimizer(rows: int, dim: int) -> None:
    assert table_storage(rows, dim, "rowwise_adagrad") == rows * dim * 4 + rows * 4
    assert table_storage(rows, dim, "adagrad") == rows * dim * 4 * 2
    assert table_storage(rows, dim, "sgd") == rows * dim * 4


def test_dropped_tables_cost_nothing_and_params_count_rows_times_dim(schema: Schema) -> None:
    arch = Architecture.from_dims(schema, [8, 0, 16, 4])
    per_table = table_bytes(arch)
    assert per_table["t_c1"] == 0
    assert arch_bytes(arch) == sum(per_table.values())
    assert arch_bytes(arch, count="params") == 10 * 8 + 100_000 * 16 + 7 * 4


def test_bytes_grow_with_every_dim(schema: Schema) -> None:
    warm_cache([f.num_embeddings for f in schema.sparse], range(0, 68, 4))
    base = [8, 8, 8, 8]
    for i in range(len(base)):
        prev = -1
        for d in range(0, 68, 4):
            dims = list(base)
            dims[i] = d
            cost = arch_bytes(Architecture.from_dims(schema, dims))
            assert cost > prev
            prev = cost


def test_unknown_optimizer_or_count_is_rejected(schema: Schema) -> None:
    arch = Architecture.uniform(schema, 8)
    with pytest.raises(ValueError, match="rowwise_adagrad, adagrad, sgd"):
        arch_bytes(arch, optimizer="adam")
    with pytest.raises(ValueError, match="bytes, params"):
        arch_bytes(arch, count="flops")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GiB", 3 * 2**29),
        ("800MB", 800_000_000),
        ("123456", 123456),
        ("64KiB", 65536),
        ("8 x 16GiB", 2**37),
    ],
)
def test_budget_parses_byte_sizes_and_topology_totals(schema: Schema, text: str, expected: int) -> None:
    assert Budget.parse(text, schema).bytes == expected


def test_budget_as_a_fraction_of_a_reference_architecture(schema: Schema, tmp_path) -> None:
    ref = arch_bytes(Architecture.uniform(schema, 64))
    assert Budget.parse("0.5 x uniform-64", schema).bytes == ref // 2
    assert Budget.parse("25% of uniform-64", schema).bytes == ref // 4
    path = str(tmp_path / "architecture.yaml")
    Architecture.from_dims(schema, [4, 8, 16, 32]).save(path)
    assert Budget.parse(f"1 x {path}", schema).bytes == arch_bytes(
        Architecture.from_dims(schema, [4, 8, 16, 32])
    )
    params = Budget.parse("0.5 x uniform-64", schema, count="params")
    assert params.bytes == sum(f.num_embeddings for f in schema.sparse) * 32


@pytest.mark.parametrize(
    "text", ["lots", "12 parsecs", "0.5 x uniform-big", "0.5 x 16GiB", "-3GiB", "0 x uniform-8"]
)
def test_bad_budget_strings_list_the_accepted_forms(schema: Schema, text: str) -> None:
    with pytest.raises(ValueError, match="Accepted forms: a size"):
        Budget.parse(text, schema)


def test_fits_and_slack_compare_an_architecture_with_the_budget(schema: Schema) -> None:
    budget = Budget.parse("0.5 x uniform-64", schema)
    small, big = Architecture.uniform(schema, 16), Architecture.uniform(schema, 64)
    assert budget.fits(small) and budget.slack(small) == budget.bytes - arch_bytes(small) > 0
    assert not budget.fits(big) and budget.slack(big) < 0


def test_budget_below_the_smallest_architecture_says_the_minimum(schema: Schema) -> None:
    minimum = arch_bytes(Architecture.uniform(schema, 4))
    Budget(minimum).check_feasible(schema, [4, 8, 16])
    with pytest.raises(ValueError, match=rf"needs {minimum} B \({format_bytes(minimum)}\)"):
        Budget(minimum - 1, text="tiny").check_feasible(schema, [16, 8, 4])


def test_parse_bytes_rejects_unknown_units() -> None:
    assert parse_bytes("2 TiB") == 2 * 1024**4
    with pytest.raises(ValueError, match="KiB, MiB, GiB"):
        parse_bytes("3 GB/s")
