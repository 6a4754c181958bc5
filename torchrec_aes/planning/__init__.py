"""Memory accounting, budgets and sharding plans.

Where the budget is enforced: `memory.Budget` (bytes = TorchRec's storage estimate, `memory.arch_bytes`);
where tables are placed: `plan.plan_model` / `plan.plan_architecture` (TorchRec's planner); plan files:
`plan_io`.
"""

from torchrec_aes.planning.memory import (
    Budget,
    arch_bytes,
    attach_table_optimizer,
    format_bytes,
    meta_ebc,
    parse_bytes,
    table_bytes,
    table_storage,
    warm_cache,
)
from torchrec_aes.planning.plan import (
    PlanError,
    PlanRow,
    format_plan_summary,
    make_topology,
    plan_architecture,
    plan_model,
    plan_summary,
)
from torchrec_aes.planning.plan_io import load_plan, save_plan

__all__ = [
    "Budget",
    "PlanError",
    "PlanRow",
    "arch_bytes",
    "attach_table_optimizer",
    "format_bytes",
    "format_plan_summary",
    "load_plan",
    "make_topology",
    "meta_ebc",
    "parse_bytes",
    "plan_architecture",
    "plan_model",
    "plan_summary",
    "save_plan",
    "table_bytes",
    "table_storage",
    "warm_cache",
]
