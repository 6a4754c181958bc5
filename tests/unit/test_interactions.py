"""The LightGCN-format interactions reader and its per-user splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import DataConfig
from torchrec_aes.data.interactions import CSR, load_interactions, read_interaction_file, split_per_user


def _write(path: Path, lines: list[str]) -> str:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def _pairs(csr: CSR) -> set[tuple[int, int]]:
    users, items = csr.to_pairs()
    return set(zip(users.tolist(), items.tolist(), strict=True))


def _many_items_file(tmp_path: Path, num_users: int = 30, per_user: int = 20) -> str:
    lines = [" ".join(map(str, [u] + [(u + 3 * j) % 97 for j in range(per_user)])) for u in range(num_users)]
    return _write(tmp_path / "train.txt", lines)


@pytest.mark.parametrize("name", ["train.txt", "train.txt.gz"])
def test_reader_reads_plain_and_gzip_files_into_user_item_pairs(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, ["0 3 1", "", "2 0 0 4", "5"])
    users, items, skipped = read_interaction_file(path)
    assert skipped == 0
    # A user line without items (user 5) yields one (user, -1) placeholder so the user still counts.
    assert list(zip(users.tolist(), items.tolist(), strict=True)) == [
        (0, 3),
        (0, 1),
        (2, 0),
        (2, 0),
        (2, 4),
        (5, -1),
    ]


def test_load_sizes_tables_from_max_ids_and_drops_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.txt", ["0 3 1 1", "2 0 4", "5"])
    data = load_interactions(DataConfig(type="interactions", path=path, split=[0.98, 0.01, 0.01]))
    assert (data.num_users, data.num_items) == (6, 5)
    all_pairs = _pairs(data.train) | _pairs(data.val) | _pairs(data.test)
    assert all_pairs == {(0, 1), (0, 3), (2, 0), (2, 4)}
    assert data.user_freq.tolist() == torch.bincount(data.train.to_pairs()[0], minlength=6).tolist()
    assert int(data.item_freq.sum()) == data.train.nnz


@pytest.mark.parametrize(
    ("line", "message"),
    [("1 2 x", r"train\.txt:2: 'x' is not an integer id"), ("1 -4 2", r"train\.txt:2: negative id -4")],
)
def test_malformed_line_raises_value_error_naming_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    path = _write(tmp_path / "train.txt", ["0 1 2", line, "2 3"])
    with pytest.raises(ValueError, match=message):
        load_interactions(DataConfig(type="interactions", path=path))


def test_skip_bad_rows_skips_and_counts_malformed_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.txt", ["0 1 2", "1 2 x", "-1 3", "2 3"])
    data = load_interactions(DataConfig(type="interactions", path=path, skip_bad_rows=True))
    assert data.skipped_rows == 2
    assert data.num_users == 3


def test_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_interactions(DataConfig(type="interactions", path=str(tmp_path / "nope.txt")))


def test_per_user_split_is_disjoint_and_covers_every_interaction(tmp_path: Path) -> None:
    path = _many_items_file(tmp_path)
    data = load_interactions(DataConfig(type="interactions", path=path, split=[0.5, 0.25, 0.25]))
    train, val, test = _pairs(data.train), _pairs(data.val), _pairs(data.test)
    assert not (train & val) and not (train & test) and not (val & test)
    users, items, _ = read_interaction_file(path)
    assert train | val | test == set(zip(users.tolist(), items.tolist(), strict=True))


def test_per_user_split_gives_each_user_the_configured_shares(tmp_path: Path) -> None:
    data = load_interactions(
        DataConfig(type="interactions", path=_many_items_file(tmp_path, per_user=20), split=[0.5, 0.25, 0.25])
    )
    # 20 items per user split 50/25/25 exactly: 10/5/5 for every user.
    assert data.train.lengths.tolist() == [10] * 30
    assert data.val.lengths.tolist() == [5] * 30
    assert data.test.lengths.tolist() == [5] * 30


def test_split_is_seeded_and_the_seed_changes_it(tmp_path: Path) -> None:
    path = _many_items_file(tmp_path)

    def split(seed: int) -> set:
        cfg = DataConfig(type="interactions", path=path, split=[0.5, 0.25, 0.25], split_seed=seed)
        return _pairs(load_interactions(cfg).test)

    assert split(3) == split(3)
    assert split(3) != split(4)


def test_user_with_a_single_item_keeps_it_for_training() -> None:
    train, val, test = split_per_user(
        torch.tensor([0, 1, 1]), torch.tensor([5, 6, 7]), 2, [0.5, 0.25, 0.25], 0
    )
    assert train.row(0).tolist() == [5]
    assert val.row(0).numel() == 0 and test.row(0).numel() == 0


def test_test_file_gives_test_and_validation_is_carved_from_train_per_user(tmp_path: Path) -> None:
    train_lines = [" ".join(map(str, [u] + list(range(12)))) for u in range(4)] + ["4 7"]
    path = _write(tmp_path / "train.txt", train_lines)
    test_path = _write(tmp_path / "test.txt", ["0 20", "1 21 22", "4 30"])
    data = load_interactions(
        DataConfig(type="interactions", path=path, test_path=test_path, split=[0.5, 0.25, 0.25])
    )
    assert (data.num_users, data.num_items) == (5, 31)
    assert _pairs(data.test) == {(0, 20), (1, 21), (1, 22), (4, 30)}
    # Validation share = 0.25 / (0.5 + 0.25) = 1/3 of each user's training items.
    assert data.val.lengths.tolist()[:4] == [4, 4, 4, 4]
    assert data.train.lengths.tolist()[:4] == [8, 8, 8, 8]
    # A user with a single training item keeps it for training.
    assert data.train.row(4).tolist() == [7] and data.val.row(4).numel() == 0
    assert not (_pairs(data.train) & _pairs(data.val))


def test_schema_gives_a_uniform_architecture_user_and_item_tables(tmp_path: Path) -> None:
    data = load_interactions(DataConfig(type="interactions", path=_many_items_file(tmp_path)))
    arch = Architecture.uniform(data.schema, 16)
    assert data.schema.task == "cf"
    assert [(t.name, t.feature_names, t.num_embeddings) for t in arch.tables] == [
        ("t_user", ["user"], 30),
        ("t_item", ["item"], 87),  # max item id (29 + 3 * 19) + 1
    ]


def test_csr_contains_and_gather_answer_membership_and_rows() -> None:
    csr = CSR.from_pairs(torch.tensor([0, 0, 2, 2]), torch.tensor([4, 1, 3, 1]), 3)
    assert csr.contains(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 3, 1, 3])).tolist() == [
        True,
        False,
        False,
        True,
    ]
    rows, items = csr.gather(torch.tensor([2, 1, 0]))
    assert rows.tolist() == [0, 0, 2, 2] and items.tolist() == [1, 3, 1, 4]


def test_gowalla_loads_with_its_published_sizes() -> None:
    train = SHARED_DATA / "gowalla" / "train.txt.gz"
    if not train.exists():
        pytest.skip(f"Gowalla sample not found at {train} (../shared/data beside the checkout)")
    cfg = DataConfig(
        type="interactions",
        path=str(train),
        test_path=str(SHARED_DATA / "gowalla" / "test.txt.gz"),
        split=[0.5, 0.25, 0.25],
    )
    data = load_interactions(cfg)
    assert (data.num_users, data.num_items) == (29_858, 40_981)
    assert data.train.nnz + data.val.nnz == 810_128
    assert data.test.nnz == 217_242
