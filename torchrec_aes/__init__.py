"""torchrec_aes: automatic embedding-size and architecture search on TorchRec.

The Python API for existing TorchRec pipelines (see `torchrec_aes.api`)::

    arch = torchrec_aes.load_architecture("runs/quickstart")
    tables = torchrec_aes.resize_configs(my_tables, arch)
    plan = torchrec_aes.plan_for(arch, world_size=8, device="cuda", configs=my_tables)

or searches your own model and data::

    result = torchrec_aes.search_embedding_dims(my_tables, MyModel, train_batches, val_batches, "1GiB")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchrec_aes.api import (
        Architecture,
        EmbeddingSearch,
        TableArch,
        block_model,
        load_architecture,
        load_plan,
        plan_for,
        planner_constraints,
        resize_configs,
        save_plan,
        search_embedding_dims,
    )

__all__ = [
    "Architecture",
    "EmbeddingSearch",
    "TableArch",
    "block_model",
    "load_architecture",
    "load_plan",
    "plan_for",
    "planner_constraints",
    "resize_configs",
    "save_plan",
    "search_embedding_dims",
]


def __getattr__(name: str) -> Any:
    # Lazy: the API imports TorchRec (seconds); `import torchrec_aes` and the CLI's startup stay cheap.
    if name in __all__:
        from torchrec_aes import api  # start-up time (see above)

        return getattr(api, name)
    raise AttributeError(f"module 'torchrec_aes' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
