"""A search method's saved state carries its run's identity and checksums: a state of another run is
refused in one line naming what differs, a damaged one is said so and its phase starts fresh."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.config import load_config
from torchrec_aes.errors import CheckpointError
from torchrec_aes.runs import run_search
from torchrec_aes.search.state import load_state, save_state, state_identity
from torchrec_aes.tasks.ctr import CTRTask


def _identity(seed: int = 0) -> dict:
    cfg = tiny_config()
    cfg.train.seed = seed
    return state_identity(cfg, CTRTask(cfg, tiny_splits(n=200)), {"knob": 1}, budget_bytes=1000)


def test_a_saved_state_is_resumed_by_its_own_run(tmp_path: Path) -> None:
    path = str(tmp_path / "state.pt")
    save_state(path, {"update": 3, "logits": torch.ones(2)}, _identity())
    blob = load_state(path, _identity())
    assert blob["update"] == 3 and torch.equal(blob["logits"], torch.ones(2))
    assert load_state(str(tmp_path / "missing.pt"), _identity()) is None


def test_a_state_of_another_run_is_refused_naming_what_differs(tmp_path: Path) -> None:
    path = str(tmp_path / "state.pt")
    save_state(path, {"update": 3}, _identity(seed=0))
    with pytest.raises(CheckpointError, match=r"train\.seed 0 vs 1"):
        load_state(path, _identity(seed=1))


def test_a_damaged_state_starts_its_phase_fresh_and_says_so(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.pt"
    save_state(str(path), {"update": 3}, _identity())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert load_state(str(path), _identity()) is None
    assert "damaged" in caplog.text
    (tmp_path / "state.pt.json").write_text("{not json")
    assert load_state(str(path), _identity()) is None


def test_an_adass_rerun_with_another_seed_refuses_the_saved_supernet(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "tests" / "adass_tiny.yaml")
    common = [f"run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"]
    run_search(load_config(config, common))
    with pytest.raises(
        CheckpointError, match=r"supernet_eval\.pt: saved by another run \(train\.seed 0 vs 1"
    ):
        run_search(load_config(config, [*common, "train.seed=1"]))


def test_nasrec_scores_edited_or_damaged_are_rescored_not_trusted(tmp_path: Path, caplog) -> None:
    from torchrec_aes.search.nasrec.search import load_scores, save_scores

    path = tmp_path / "nasrec_scores.json"
    identity = {"seed": 0}
    save_scores(str(path), identity, {"graph-a": {"auc": 0.71}, "graph-b": {"auc": 0.69}})
    assert load_scores(str(path), identity)["graph-a"] == {"auc": 0.71}
    assert load_scores(str(path), {"seed": 1}) == {}  # another run's
    path.write_text(path.read_text().replace("0.69", "0.99"))  # an edit that would change the pick
    with caplog.at_level(logging.WARNING):
        assert load_scores(str(path), identity) == {}
    assert "damaged or edited" in caplog.text
    for text in ("null", "[]", '{"identity": {"seed": 0}, "scores": null}', "{"):
        path.write_text(text)
        assert load_scores(str(path), identity) == {}
