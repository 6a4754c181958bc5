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

import logging
from dataclasses import dataclass, field

import torch

from torchrec_aes.config import DataConfig
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.data.textfile import (
    STREAM_ERRORS,
    check_file,
    check_skipped_share,
    not_utf8,
    open_text,
    stream_error,
    undecodable_byte,
)

logger = logging.getLogger(__name__)

MAX_ID = 2**31 - 1
"""Ids must be smaller than this: they become int32 KJT values, and `CSR` packs keys in base 2**31."""

MAX_ID_SPARSITY = 50
"""A table may have at most this many rows (max id + 1) per distinct id seen in the files.

Tables are sized by the largest id, so ids that are not 0-based and dense (raw hashes, timestamps, a
stray huge number) would allocate gigabytes of rows that no interaction touches; such files need their
ids remapped to 0..N-1 first.
"""


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


def read_interaction_file(
    path: str, max_rows: int = 0, skip_bad_rows: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reads a LightGCN-format file into (users [N], items [N]) pairs.

    Args:
        path: local path or iopath URI, plain or gzip'ed (recognised by its magic bytes).
        max_rows: read at most this many lines (0 = all).
        skip_bad_rows: skip malformed lines (and count them) instead of raising.

    Returns:
        (users [N] int64, items [N] int64, number of skipped lines). Users listed without items add no
        pairs but still count towards the number of users: they appear as (user, -1) pairs that the
        caller drops after sizing the tables.

    Raises:
        ValueError: "FILE:LINE: what (expected ...)" for a malformed line -- a non-integer token, a
            negative id, an id >= `MAX_ID`, bytes that are not UTF-8 -- unless `skip_bad_rows`; even when
            skipping: a damaged gzip stream, a file without a single line, or more skipped lines than
            `MAX_SKIPPED_SHARE`. A missing file raises `DataFileNotFoundError`, a `ValueError` that is
            also a `FileNotFoundError`.
    """
    check_file(path)
    users: list[int] = []
    items: list[int] = []
    read = skipped = 0
    first_error = ""
    lineno = 0
    with open_text(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if max_rows and lineno > max_rows:
                    break
                tokens = line.split()
                if not tokens:
                    continue
                read += 1
                try:
                    ids = [int(t) for t in tokens]
                except ValueError:
                    error = f"{path}:{lineno}: {_bad_token(tokens)}"
                else:
                    if min(ids) >= 0 and max(ids) < MAX_ID:
                        user, line_items = ids[0], ids[1:]
                        users.extend([user] * max(len(line_items), 1))
                        items.extend(line_items or [-1])
                        continue
                    if min(ids) < 0:
                        error = f"{path}:{lineno}: negative id {min(ids)} (ids are 0-based and non-negative)"
                    else:
                        error = f"{path}:{lineno}: id {max(ids)} is too large (expected ids < {MAX_ID})"
                if not skip_bad_rows:
                    raise ValueError(error)
                skipped += 1
                first_error = first_error or error
        except STREAM_ERRORS as e:
            raise stream_error(path, lineno, e) from None
    if not read:
        raise ValueError(f"{path}: no data lines (expected lines 'user item item ...')")
    if skipped:
        logger.warning("%s: skipped %d malformed line(s) (first: %s)", path, skipped, first_error)
        check_skipped_share(skipped, read, first_error, path)
    return torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64), skipped


def _bad_token(tokens: list[str]) -> str:
    """What is wrong with a line that has a token `int()` rejects."""
    byte = undecodable_byte(tokens)
    if byte is not None:
        return not_utf8(byte)
    bad = next(t for t in tokens if not _is_int(t))
    return f"'{bad}' is not an integer id (expected 'user item item ...')"


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
        ValueError: a malformed line ("FILE:LINE: ..."), an empty data set, a missing `data.path`, or ids
            that would size a table beyond `MAX_ID_SPARSITY` rows per distinct id.
    """
    if not cfg.path:
        raise ValueError("data.path: the interactions reader needs a file ('user item item ...' per line)")
    if "," in cfg.path:
        raise ValueError(f"data.path: '{cfg.path}': the interactions reader takes one file")
    check_file(cfg.path)
    if cfg.test_path:
        check_file(cfg.test_path, "data.test_path")
    users, items, skipped = read_interaction_file(cfg.path, cfg.max_rows, cfg.skip_bad_rows)
    t_users = t_items = torch.empty(0, dtype=torch.int64)
    if cfg.test_path:
        t_users, t_items, t_skipped = read_interaction_file(cfg.test_path, cfg.max_rows, cfg.skip_bad_rows)
        skipped += t_skipped
    all_users = torch.cat([users, t_users])
    all_items = torch.cat([items, t_items])
    if all_users.numel() == 0:
        raise ValueError(f"data.path: '{cfg.path}' has no interactions")
    files = [cfg.path, cfg.test_path] if cfg.test_path else [cfg.path]
    _check_table_size("user", all_users, files, cfg.max_rows)
    _check_table_size("item", all_items[all_items >= 0], files, cfg.max_rows)
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


def _check_table_size(kind: str, ids: torch.Tensor, files: list[str], max_rows: int) -> None:
    """Checks that the table sized by the largest of `ids` [N] has <= MAX_ID_SPARSITY rows per distinct id.

    Raises:
        ValueError: "FILE:LINE: ..." at the first line holding the largest id.
    """
    if not ids.numel():
        return
    size = int(ids.max()) + 1
    if size <= MAX_ID_SPARSITY * ids.numel():
        # A flag per table row costs at most MAX_ID_SPARSITY bytes per id read, far below the table itself.
        seen = torch.zeros(size, dtype=torch.bool)
        seen[ids] = True
        distinct = int(seen.sum())
        if size <= MAX_ID_SPARSITY * distinct:
            return
    else:  # more rows than MAX_ID_SPARSITY per id read, let alone per distinct id
        distinct = int(torch.unique(ids).numel())
    path, line = _find_id(files, max_rows, size - 1, user=kind == "user")
    raise ValueError(
        f"{path}:{line}: {kind} id {size - 1} would size the {kind} table to {size} rows for {distinct} "
        f"distinct {kind} ids (expected max id + 1 <= {MAX_ID_SPARSITY} x distinct ids = "
        f"{MAX_ID_SPARSITY * distinct}; remap the ids to 0..N-1)"
    )


def _find_id(files: list[str], max_rows: int, value: int, user: bool) -> tuple[str, int]:
    """The first (file, line) whose user (or one of whose items) is `value`; only run to word an error."""
    for path in files:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if max_rows and lineno > max_rows:
                    break
                tokens = line.split()
                for token in tokens[:1] if user else tokens[1:]:
                    if _is_int(token) and int(token) == value:
                        return path, lineno
    raise AssertionError(f"id {value} was read but is in none of {files}")


def _unique_pairs(users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.unique(users * _KEY_STRIDE + items)
    return keys // _KEY_STRIDE, keys % _KEY_STRIDE
