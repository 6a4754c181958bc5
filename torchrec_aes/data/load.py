"""`load_data`, the one entry point for CTR data: `data.type` picks a reader from an explicit registry
(file readers are named by module, so only the one a config asks for is imported).

Example::

    splits = load_data(cfg.data)
    for batch in iter_batches(splits.train, splits.schema.sparse_names, batch_size=512):
        ...
"""

from __future__ import annotations

import importlib
from dataclasses import replace

from torchrec_aes.config import DataConfig
from torchrec_aes.data.binary import load_criteo_binary
from torchrec_aes.data.dataset import Splits
from torchrec_aes.data.preprocess import RawTable, preprocess
from torchrec_aes.data.stream_text import load_text_streamed, streamed
from torchrec_aes.data.synthetic import load_synthetic

RAW_READERS: dict[str, tuple[str, str]] = {
    "criteo": ("torchrec_aes.data.criteo", "read_criteo"),
    "tabular": ("torchrec_aes.data.tabular", "read_tabular"),
    "libfm": ("torchrec_aes.data.libfm", "read_libfm"),
}
"""File readers producing a RawTable, by `data.type`: module and function."""

STREAMED_TYPES = ("criteo_binary",)
"""Data types read as streams (per rank, in chunks) when `data.streaming` says so; criteo and tabular
text files stream too, through a converted cache (`data.stream_text`)."""

DATA_TYPES = ("synthetic", *RAW_READERS, *STREAMED_TYPES, "interactions")
"""Every allowed `data.type`."""


def read_raw(cfg: DataConfig) -> RawTable:
    """Reads the files of a file-based CTR data set (`criteo`, `tabular`, `libfm`) into a RawTable.

    Raises:
        ValueError: `cfg.type` is not a file-based CTR reader, a file is missing, or a row is malformed.
    """
    if cfg.type not in RAW_READERS:
        raise ValueError(f"data.type: '{cfg.type}' has no file reader; readers: {', '.join(RAW_READERS)}")
    module, function = RAW_READERS[cfg.type]
    return getattr(importlib.import_module(module), function)(cfg)


def load_data(cfg: DataConfig, cache_dir: str = "") -> Splits:
    """Loads a CTR data set as train/val/test `Splits` with its schema.

    Args:
        cfg: the data section; `cfg.type` is one of synthetic | criteo | tabular | libfm | criteo_binary
            (streamed: the splits are `BinaryRows`).
        cache_dir: where the synthetic generator caches its data (default `cfg.cache_dir`).

    Raises:
        ValueError: an unknown type (the message lists the allowed ones), `interactions` (CF data has its
            own loader), a missing file (the message names the path), or a malformed row.
    """
    splits = _load(cfg, cache_dir)
    return replace(splits, schema=splits.schema.configured(cfg.pooling, cfg.shared_tables))


def _load(cfg: DataConfig, cache_dir: str) -> Splits:
    if cfg.type == "synthetic":
        return load_synthetic(cfg, cache_dir or cfg.cache_dir)[0]
    if cfg.type == "interactions":
        raise ValueError(
            "data.type: 'interactions' is collaborative-filtering data, not CTR rows; load it with "
            "torchrec_aes.data.interactions.load_interactions"
        )
    if cfg.type == "criteo_binary":
        return load_criteo_binary(cfg)
    if cfg.type not in RAW_READERS:
        raise ValueError(f"data.type: '{cfg.type}' is not one of {', '.join(DATA_TYPES)}")
    unbagged = sorted(set(cfg.weighted_columns) - set(cfg.multi_hot_columns))
    if unbagged:
        raise ValueError(
            f"data.weighted_columns: {unbagged[0]!r} is not in data.multi_hot_columns; a weighted feature is "
            "a bag of id:weight pairs (a bag of one for one id)"
        )
    if cfg.multi_hot_columns and cfg.type not in ("tabular", "libfm"):
        raise ValueError(
            f"data.multi_hot_columns: bags of ids in columns are read by the tabular and libfm readers, not "
            f"data.type '{cfg.type}'"
        )
    if streamed(cfg):
        if cfg.weighted_columns:
            raise ValueError(
                "data.weighted_columns: weighted text files are read in memory; set data.streaming=never "
                "(streaming their weights through the day-file cache is not supported yet)"
            )
        return load_text_streamed(cfg)
    return preprocess(read_raw(cfg), cfg)


__all__ = ["DATA_TYPES", "RAW_READERS", "STREAMED_TYPES", "load_data", "read_raw"]
