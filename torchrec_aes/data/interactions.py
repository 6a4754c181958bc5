"""Implicit-feedback interactions in the LightGCN format, split per user for collaborative filtering.

File format (LightGCN / NGCF `train.txt` / `test.txt`): one line per user, space-separated 0-based ids,
`user item item ...`; plain text or `.gz`. A line with a user and no items is allowed (the user exists
but has no interactions in that file); a user appearing on several lines has the items merged;
duplicate items of a user are kept once.

Splits are per user (every user's items are divided by the split fractions), as in LightGCN and BET:

- with `DataConfig.test_path`, test comes from that file and validation is carved from each user's
  training items: a share `split[1] / (split[0] + split[1])`, keeping at least one training item;
- otherwise each user's items are split by `split` (e.g. BET's 50/25/25).

Both splits are seeded by `DataConfig.split_seed` and independent of the training seed.

Example::

    data = load_interactions(DataConfig(type="interactions", path="gowalla/train.txt.gz",
                                        test_path="gowalla/test.txt.gz", split=[0.5, 0.25, 0.25]))
    arch = Architecture.uniform(data.schema, 64)  # tables t_user, t_item
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from typing import TextIO

import torch
from iopath.common.file_io import g_pathmgr

from torchrec_aes.config import DataConfig
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.io import is_local

logger = logging.getLogger(__name__)


@dataclass
class CSR:
    """User -> items adjacency in compressed-sparse-row form.

    Args:
        indptr: [U + 1] int64, row offsets; user u's items are `indices[indptr[u]:indptr[u + 1]]`.
        indices: [nnz] int64 item ids, sorted ascending within each row.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    _keys_cache: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_pairs(cls, users: torch.Tensor, items: torch.Tensor, num_users: int) -> CSR:
        """Builds rows from (user, item) pairs [N]; duplicate pairs are kept once."""
        keys = torch.unique(users.long() * _KEY_STRIDE + items.long())  # sorted: by user, then item
        users, items = keys // _KEY_STRIDE, keys % _KEY_STRIDE
        counts = torch.bincount(users, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        return cls(indptr, items)

    @property
    def num_rows(self) -> int:
        return int(self.indptr.numel() - 1)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def lengths(self) -> torch.Tensor:
        """[U] items per user."""
        return self.indptr[1:] - self.indptr[:-1]

    def row(self, user: int) -> torch.Tensor:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def to_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [nnz], items [nnz]), row-major."""
        users = torch.repeat_interleave(torch.arange(self.num_rows), self.lengths)
        return users, self.indices

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items of `rows` [R] as (position in `rows` [M], item [M]); vectorised."""
        lengths = self.lengths[rows]
        position = torch.repeat_interleave(torch.arange(rows.numel()), lengths)
        # Each element's offset inside its row = its output index minus its row's first output index.
        row_out_start = torch.cumsum(lengths, 0) - lengths
        source = self.indptr[rows][position] + torch.arange(position.numel()) - row_out_start[position]
        return position, self.indices[source]

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[N] bool: whether each (user, item) pair is in the matrix (binary search on sorted keys)."""
        keys = self._keys()
        query = users.long() * _KEY_STRIDE + items.long()
        pos = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
        return keys[pos] == query if keys.numel() else torch.zeros_like(query, dtype=torch.bool)

    def _keys(self) -> torch.Tensor:
        if self._keys_cache is None:
            users, items = self.to_pairs()
            self._keys_cache = users * _KEY_STRIDE + items  # sorted, as rows and items within rows are
        return self._keys_cache


# Item ids are < 2**31 (int32 KJT values), so user * 2**31 + item is a unique, order-preserving key.
_KEY_STRIDE = 2**31


@dataclass
class InteractionData:
    """A CF data set: user and item counts, per-user train/val/test items, train frequencies.

    Args:
        num_users: U, rows of the user table (max user id + 1 over all files).
        num_items: I, rows of the item table (max item id + 1 over all files).
        train: [U] rows of training items.
        val: [U] rows of validation items (disjoint from train and test).
        test: [U] rows of test items.
        user_freq: [U] int64, training interactions per user.
        item_freq: [I] int64, training interactions per item.
        skipped_rows: malformed lines skipped (with `skip_bad_rows`).
    """

    num_users: int
    num_items: int
    train: CSR
    val: CSR
    test: CSR
    user_freq: torch.Tensor
    item_freq: torch.Tensor
    skipped_rows: int = 0

    @property
    def schema(self) -> Schema:
        """Sparse features `user` and `item`, so a uniform architecture has tables `t_user`, `t_item`."""
        return Schema(
            sparse=[SparseFeature("user", self.num_users), SparseFeature("item", self.num_items)],
            label="interaction",
            task="cf",
        )


def _open(path: str) -> TextIO:
    if is_local(path):
        local = path.removeprefix("file://")
        return gzip.open(local, "rt") if path.endswith(".gz") else open(local)
    if path.endswith(".gz"):
        return gzip.open(g_pathmgr.open(path, "rb"), "rt")
    return g_pathmgr.open(path, "r")


def read_interaction_file(
    path: str, max_rows: int = 0, skip_bad_rows: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reads a LightGCN-format file into (users [N], items [N]) pairs.

    Args:
        path: local path or iopath URI, plain or `.gz`.
        max_rows: read at most this many lines (0 = all).
        skip_bad_rows: skip malformed lines (and count them) instead of raising.

    Returns:
        (users [N] int64, items [N] int64, number of skipped lines). Users listed without items add no
        pairs but still count towards the number of users: they appear as (user, -1) pairs that the
        caller drops after sizing the tables.

    Raises:
        ValueError: "FILE:LINE: ..." for a non-integer token or a negative id.
        FileNotFoundError: the file does not exist.
    """
    users: list[int] = []
    items: list[int] = []
    skipped = 0
    try:
        handle = _open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    with handle as f:
        for lineno, line in enumerate(f, start=1):
            if max_rows and lineno > max_rows:
                break
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = [int(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not _is_int(t))
                error = f"{path}:{lineno}: '{bad}' is not an integer id (expected 'user item item ...')"
            else:
                negative = [i for i in ids if i < 0]
                if not negative:
                    user, line_items = ids[0], ids[1:]
                    users.extend([user] * max(len(line_items), 1))
                    items.extend(line_items or [-1])
                    continue
                error = f"{path}:{lineno}: negative id {negative[0]} (ids are 0-based and non-negative)"
            if not skip_bad_rows:
                raise ValueError(error)
            skipped += 1
    if skipped:
        logger.warning("%s: skipped %d malformed line(s)", path, skipped)
    return torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64), skipped


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def split_per_user(
    users: torch.Tensor, items: torch.Tensor, num_users: int, fractions: list[float], seed: int
) -> tuple[CSR, CSR, CSR]:
    """Seeded per-user split of (user, item) pairs into train/val/test CSRs by `fractions`.

    Each user's items are shuffled and cut at round(n * f0) and round(n * (f0 + f1)) (half up), so the
    shares hold per user up to rounding; a user with at least one item keeps at least one for train.
    A fraction of 0 gives an empty part.

    Args:
        users: [N] user ids (unique pairs).
        items: [N] item ids.
        num_users: U.
        fractions: [3] train/val/test fractions summing to 1.
        seed: split seed.
    """
    n = users.numel()
    gen = torch.Generator().manual_seed(seed)
    # Shuffle within users: random keys, then a stable sort by user keeps the random order per user.
    perm = torch.randperm(n, generator=gen)
    users, items = users[perm], items[perm]
    order = torch.sort(users, stable=True).indices
    users, items = users[order], items[order]
    counts = torch.bincount(users, minlength=num_users)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(n) - starts[users]
    total = counts[users].double()
    cut1 = torch.floor(total * fractions[0] + 0.5).clamp(min=1).long()
    cut2 = torch.maximum(torch.floor(total * (fractions[0] + fractions[1]) + 0.5).long(), cut1)
    if fractions[2] == 0:
        cut2 = counts[users]
    parts = []
    for mask in (position < cut1, (position >= cut1) & (position < cut2), position >= cut2):
        parts.append(CSR.from_pairs(users[mask], items[mask], num_users))
    return parts[0], parts[1], parts[2]


def load_interactions(cfg: DataConfig) -> InteractionData:
    """Reads `cfg.path` (and `cfg.test_path`) and splits per user; see the module docstring.

    Raises:
        ValueError: a malformed line ("FILE:LINE: ..."), an empty data set, or a missing `data.path`.
    """
    if not cfg.path:
        raise ValueError("data.path: the interactions reader needs a file ('user item item ...' per line)")
    if "," in cfg.path:
        raise ValueError(f"data.path: '{cfg.path}': the interactions reader takes one file")
    users, items, skipped = read_interaction_file(cfg.path, cfg.max_rows, cfg.skip_bad_rows)
    t_users = t_items = torch.empty(0, dtype=torch.int64)
    if cfg.test_path:
        t_users, t_items, t_skipped = read_interaction_file(cfg.test_path, cfg.max_rows, cfg.skip_bad_rows)
        skipped += t_skipped
    all_users = torch.cat([users, t_users])
    all_items = torch.cat([items, t_items])
    if all_users.numel() == 0:
        raise ValueError(f"data.path: '{cfg.path}' has no interactions")
    num_users = int(all_users.max()) + 1
    num_items = int(all_items.max()) + 1 if all_items.numel() else 0
    if num_items == 0:
        raise ValueError(f"data.path: '{cfg.path}' has users but no items")
    keep = items >= 0
    users, items = _unique_pairs(users[keep], items[keep])
    if cfg.test_path:
        share = cfg.split[1] / (cfg.split[0] + cfg.split[1])
        train, val, _ = split_per_user(users, items, num_users, [1.0 - share, share, 0.0], cfg.split_seed)
        keep = t_items >= 0
        test = CSR.from_pairs(t_users[keep], t_items[keep], num_users)
    else:
        train, val, test = split_per_user(users, items, num_users, list(cfg.split), cfg.split_seed)
    train_users, train_items = train.to_pairs()
    return InteractionData(
        num_users=num_users,
        num_items=num_items,
        train=train,
        val=val,
        test=test,
        user_freq=torch.bincount(train_users, minlength=num_users),
        item_freq=torch.bincount(train_items, minlength=num_items),
        skipped_rows=skipped,
    )


def _unique_pairs(users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.unique(users * _KEY_STRIDE + items)
    return keys // _KEY_STRIDE, keys % _KEY_STRIDE
