"""Tasks: what is learned and measured (CTR: BCE, AUC/logloss/NE; CF: BPR, full-ranking Recall/NDCG).

`get_task(cfg)` loads `cfg.data` into the task its `data.type` calls for; the one `Trainer` trains any
task, and search methods declare the tasks they support.
"""

from torchrec_aes.tasks.base import Task, get_task, task_of

__all__ = ["Task", "get_task", "task_of"]
