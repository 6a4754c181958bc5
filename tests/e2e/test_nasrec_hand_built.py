"""DLRM and DCN are points of NASRec's search space: each, built as a block graph (`dlrm_graph`,
`dcn_graph`) and trained as a `BlockNet`, reaches the hand-built model's quality on the same data, split
and seeds (planted synthetic data whose label lives in pairwise interactions)."""

from __future__ import annotations

import statistics

import pytest

from tests.conftest import REPO
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.models.blocks import BlocksHooks
from torchrec_aes.search.nasrec.search import space_of
from torchrec_aes.search.nasrec.space import dcn_graph, dlrm_graph
from torchrec_aes.tasks.base import get_task
from torchrec_aes.train.trainer import Trainer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("single_thread")]

OVERRIDES = [
    "train.progress=false",
    "train.checkpoint=false",
    "train.epochs=3",
    "train.dense_lr=0.003",
    "data.synthetic.num_examples=30000",
    "data.synthetic.cardinalities=[20,50,100,30,80,40]",
    "data.synthetic.true_ranks=[4,8,4,0,8,4]",
    "search.nasrec.num_blocks=3",
    "search.nasrec.widths=[8,16,32]",
    "search.nasrec.token_dim=8",
]


def test_dlrm_and_dcn_as_block_graphs_train_to_the_hand_built_models_quality(tmp_path):
    diffs: dict[str, list[float]] = {"dlrm": [], "dcn": []}
    for seed in (0, 1, 2):
        cfg = load_config(
            str(REPO / "configs" / "tests" / "nasrec_tiny.yaml"),
            [*OVERRIDES, f"train.seed={seed}", f"data.cache_dir={tmp_path}"],
        )
        task = get_task(cfg)
        space = space_of(cfg.search.nasrec, cfg.model)  # the default space: LayerNorm, identity tokens
        # Tables at DLRM's interaction dim (8 = model.dense_arch[-1] = the token dim): the hand-built DLRM
        # reads its embeddings unprojected.
        arch = Architecture.uniform(task.schema, 8)
        graphs = {
            "dlrm": dlrm_graph(space, list(cfg.model.dense_arch), list(cfg.model.over_arch)),
            "dcn": dcn_graph(space, list(cfg.model.over_arch)),
        }
        for name, graph in graphs.items():
            cfg.model.type = name
            hand = Trainer(cfg, task, arch, "", name).fit(test=False)
            blocks = Trainer(cfg, task, arch, "", f"{name}_blocks", hooks=BlocksHooks(graph, space)).fit(
                test=False
            )
            assert hand["val"]["auc"] > 0.7  # both learn the planted interactions ...
            diffs[name].append(blocks["val"]["auc"] - hand["val"]["auc"])
    # ... to the same quality: the mean validation-AUC difference over seeds is within the seed-to-seed
    # noise of this size (AUCs move by 0.02-0.04 between seeds; measured differences: DLRM -0.011,
    # +0.015, -0.014; DCN -0.009, -0.019, +0.038).
    for name, d in diffs.items():
        assert abs(statistics.mean(d)) < 0.025, (name, d)
