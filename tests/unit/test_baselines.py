import random

import pytest

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.planning.memory import Budget, arch_bytes
from torchrec_aes.search.base import SearchContext, get_method, method_names
from torchrec_aes.search.baselines import largest_uniform
from torchrec_aes.tasks.ctr import CTRTask


def _ctx(budget_text: str) -> SearchContext:
    splits = tiny_splits(100)
    cfg = tiny_config()
    return SearchContext(cfg, CTRTask(cfg, splits), Budget.parse(budget_text, splits.schema))


def test_uniform_is_the_largest_uniform_dim_that_fits():
    ctx = _ctx("0.5 x uniform-64")
    arch = largest_uniform(ctx)
    assert ctx.budget.fits(arch)
    assert not ctx.budget.fits(Architecture.uniform(ctx.schema, arch.dims[0] + 4))
    # Half of uniform-64 is rows * (64 * 4 + 4) / 2 bytes; with row-wise Adagrad's 4 bytes per row,
    # dim 32 costs rows * (32 * 4 + 4) > that, so 28 is the answer.
    assert arch.dims[0] == 28


def test_power_rule_gives_rarer_tables_no_smaller_dims_and_fits():
    ctx = _ctx("0.3 x uniform-64")
    arch = get_method("power_rule")(ctx).arch
    assert ctx.budget.fits(arch)
    rows = [t.num_embeddings for t in arch.tables]
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    dims = [arch.dims[i] for i in order]
    assert dims == sorted(dims, reverse=True), "d_f must not grow with n_f"
    assert all(d % 4 == 0 for d in arch.dims)


@pytest.mark.parametrize("method", ["uniform", "power_rule"])
def test_baselines_never_exceed_random_budgets(method):
    rng = random.Random(0)
    splits = tiny_splits(100)
    smallest = arch_bytes(Architecture.uniform(splits.schema, 4))
    for _ in range(25):
        budget = Budget(rng.randint(smallest, 3 * arch_bytes(Architecture.uniform(splits.schema, 64))))
        ctx = SearchContext(tiny_config(), CTRTask(tiny_config(), splits), budget)
        assert budget.fits(get_method(method)(ctx).arch)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match="search.method: 'nope' is not one of .*power_rule.*uniform"):
        get_method("nope")
    assert {"uniform", "power_rule"} <= set(method_names())
