"""docs/design.md "Adding a search method": a small complete method through the public interface, end to end.

The method, `small_tables_first`, keeps every table at the smallest candidate and grows the tables with the
fewest rows (cheapest per extra dim) to `search.small_tables_first.max_dim` while the budget allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conftest import REPO
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.runs import run_search
from torchrec_aes.search.base import SearchContext, SearchResult, get_method


@dataclass
class SmallTablesFirstConfig:
    """search.small_tables_first: settings of the toy method."""

    max_dim: int = 16
    """The dim a grown table gets."""


def small_tables_first(ctx: SearchContext) -> SearchResult:
    cfg: SmallTablesFirstConfig = ctx.section
    dims = [min(ctx.candidates)] * len(ctx.schema.sparse)
    grown = []
    for f in sorted(range(len(dims)), key=lambda f: ctx.schema.sparse[f].num_embeddings):
        trial = dims[:f] + [cfg.max_dim] + dims[f + 1 :]
        if ctx.budget.fits(Architecture.from_dims(ctx.schema, trial)):
            dims = trial
            grown.append(ctx.schema.sparse[f].name)
    return SearchResult(Architecture.from_dims(ctx.schema, dims), log={"grown": grown})


@pytest.fixture
def registered(registry):
    registry.section("small_tables_first", SmallTablesFirstConfig)
    registry.method("small_tables_first", small_tables_first, tasks=("ctr",), section="small_tables_first")


def test_a_method_registered_through_the_public_interface_runs_end_to_end(registered, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = load_config(
        str(REPO / "configs" / "tests" / "tiny.yaml"),
        [
            "search.method=small_tables_first",
            "search.small_tables_first.max_dim=12",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={run}",
            "train.epochs=1",
        ],
    )
    metrics = run_search(cfg)
    assert metrics["budget_used"] <= metrics["budget_bytes"]
    assert set(metrics["dims"].values()) <= {4, 12} and 12 in metrics["dims"].values()
    assert metrics["search_log"]["grown"][0] == "c0"  # the smallest table (10 rows) first
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["dims"] == metrics["dims"]
    assert (run / "architecture.yaml").exists() and (run / "plan.json").exists()
    # Its config section is written with the resolved config, so the run can be repeated.
    assert "small_tables_first:\n    max_dim: 12" in (run / "config.yaml").read_text()


def test_a_method_on_data_it_does_not_support_is_a_one_line_error_listing_those_that_fit() -> None:
    with pytest.raises(ValueError) as error:
        get_method("adass", "cf")
    message = str(error.value)
    assert "\n" not in message
    assert "'adass' searches ctr data, but this config has cf data" in message
    assert "methods for cf: bet, bet_sr, bet_su, power_rule, uniform" in message
