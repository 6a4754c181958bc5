"""Typed configuration: dataclasses, strict YAML loading, dotted ``key=value`` overrides.

Precedence is defaults < YAML file < command-line overrides. Loading is strict: an unknown key is an
error that names its dotted path and the allowed keys, and a value of the wrong type names the field,
the value and the expected type.

Example::

    cfg = load_config("configs/quickstart.yaml", ["train.epochs=2", "model.type=dcn"])
    save_config(cfg, "runs/x/config.yaml")
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from torchrec_aes.errors import ConfigError, yaml_error
from torchrec_aes.io import is_local, write_text_atomic
from torchrec_aes.strict import apply_overrides, config_to_dict, from_dict, read_mapping

# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """The embedded default: Criteo-shaped data with planted per-field ranks."""

    num_examples: int = 100_000
    """Rows to generate (before the 8:1:1 split)."""
    num_dense: int = 13
    """Number of dense features."""
    cardinalities: list[int] = field(
        default_factory=lambda: [10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 1_000_000] * 2
    )
    """Rows of each sparse field's table (one entry per field)."""
    true_ranks: list[int] | None = None
    """Planted rank per sparse field (0 = carries no signal). None: a default pattern (see synthetic.py)."""
    zipf_exponent: float = 1.1
    """Exponent of the Zipf distribution that ids are drawn from."""
    signal_scale: float = 1.0
    """Multiplier on the hidden model's logit (higher = easier task)."""
    populations: int = 1
    """Number of hidden row populations, each with its own popular ids and informative fields (for
    instance-wise searches); 1 = a single population, the plain generator."""
    population_ranks: list[list[int]] | None = None
    """Planted rank per sparse field for each population: `populations` lists of one rank per field (set
    instead of `true_ranks`). None: population p uses `true_ranks` (or the default pattern) rotated left by
    p * (F // populations) fields, F = number of sparse fields."""
    multi_hot_fields: list[int] = field(default_factory=list)
    """Fields (0-based) whose rows hold a bag of ids instead of one: the bag's length is
    Poisson(`mean_bag_length`) (0 = an empty bag), its ids Zipf-drawn like a one-hot field's, and the hidden
    model reads the mean of the bag's latent vectors (so these fields pool by mean by default)."""
    mean_bag_length: float = 10.0
    """Mean bag length of the multi-hot fields."""


@dataclass
class DataConfig:
    """Where the data comes from and how it is preprocessed."""

    type: str = "synthetic"
    """Reader: synthetic | criteo | tabular | libfm | interactions | criteo_binary (streamed)."""
    path: str = ""
    """File (or comma-separated files) to read; unused for synthetic. Plain or .gz. criteo_binary: the
    directory of TorchRec's day files (day_0_dense.npy, day_0_sparse.npy, day_0_labels.npy, ...)."""
    test_path: str = ""
    """Optional separate test file (interactions: LightGCN test.txt). Empty: split `path`."""
    cache_dir: str = ""
    """Where generated synthetic data is cached. Empty: `~/.cache/torchrec_aes`."""
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """Train/val/test fractions of a seeded random split (CTR) or of each user's items (CF)."""
    split_seed: int = 0
    """Seed of the split (independent of the training seed)."""
    min_count: int = 2
    """Categorical values seen fewer times than this in train map to the field's OOV id 0."""
    hash_size: int = 0
    """If > 0, hash categorical values modulo this size instead of building a vocabulary."""
    max_rows: int = 0
    """Read at most this many rows (0 = all; criteo_binary: training rows)."""
    num_embeddings_per_feature: list[int] = field(default_factory=list)
    """criteo_binary: rows of each table; ids are taken modulo it (TorchRec's `hashes`). Empty: the
    largest id + 1 of each feature, found in one pass and cached beside the files."""
    stream_chunk_rows: int = 65536
    """criteo_binary: rows a rank reads at once; also the shuffle window of training."""
    streaming: str = "auto"
    """criteo_binary: always (stream in chunks) | never (load every split into memory on every rank) |
    auto (in memory when the files total at most `in_memory_max_mb`, else streamed)."""
    in_memory_max_mb: int = 256
    """criteo_binary with streaming=auto: the largest data (MB of day files) loaded into memory."""
    skip_bad_rows: bool = False
    """Skip and count malformed rows instead of raising an error naming file and line."""
    label_column: str = "label"
    """Tabular reader: name (or 0-based index) of the label column."""
    dense_columns: list[str] = field(default_factory=list)
    """Tabular reader: dense feature columns (names, or 0-based indices when there is no header)."""
    sparse_columns: list[str] = field(default_factory=list)
    """Tabular reader: categorical columns (names, or 0-based indices when there is no header)."""
    multi_hot_columns: list[str] = field(default_factory=list)
    """Tabular reader: categorical columns whose cells are bags of ids (a user's recent items, a page's
    tags) split on `multi_hot_separator`; each must also be in `sparse_columns`. An empty cell is an empty
    bag; each id of a bag goes through the vocabulary (or hashing) rule like a one-hot value."""
    weighted_columns: list[str] = field(default_factory=list)
    """Features whose ids carry a weight (id-score lists): a tabular cell `id:weight|id:weight` (a bag of
    `multi_hot_separator`-joined pairs), a libFM field's `idx:val` (its value is the weight). The EBC then
    pools the weighted sum (TorchRec's weighted EBC; unweighted features get weight 1); weighted features
    pool by sum."""
    multi_hot_separator: str = "|"
    """Tabular reader: separator of the ids inside a multi-hot cell."""
    max_ids_per_row: int = 0
    """Multi-hot bags longer than this keep their first `max_ids_per_row` ids (truncations are counted
    and logged); 0 = no limit."""
    pooling: dict[str, str] = field(default_factory=dict)
    """Pooling of a sparse feature's bag, {feature: sum | mean}; features not listed pool by sum (one-hot
    features: the same). Synthetic multi-hot fields default to mean (the hidden model averages a bag)."""
    shared_tables: dict[str, list[str]] = field(default_factory=dict)
    """Tables looked up by several features, {table: [feature, ...]} (e.g. `item: [item_id, history]`): one
    table `t_<table>`, its bytes counted once, its dim searched once, placed once by the planner. Text
    readers give the features one joint vocabulary; already-encoded ids (synthetic, criteo_binary) share
    the largest of the features' id ranges."""
    delimiter: str = ","
    """Tabular reader: field delimiter."""
    header: bool = True
    """Tabular reader: whether the first line is a header."""
    field_offsets: list[int] = field(default_factory=list)
    """libFM reader: first global index of each field, ascending (e.g. Frappe: 0, 957, 5039, ...), and
    optionally (with `field_names`) one more: the end of the last field, so an index beyond it is refused
    instead of read into the last field. Empty: each row's i-th index belongs to field i."""
    field_names: list[str] = field(default_factory=list)
    """libFM reader: names of the fields (default f0, f1, ...)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic generator settings."""


@dataclass
class ModelConfig:
    """The recommender model around the embedding tables."""

    type: str = "dlrm"
    """dlrm | dcn (CTR) | mf | lightgcn (collaborative filtering)."""
    embedding_dim: int = 16
    """Uniform table dim used when no architecture file is given."""
    data_type: str = "fp32"
    """Precision of the uniform tables used when no architecture file is given: fp32 | fp16 | int8 | int4
    (int8 / int4: trained in fp32, tested as TorchRec's quantized inference path serves them)."""
    dense_arch: list[int] = field(default_factory=lambda: [64, 16])
    """DLRM bottom MLP layer sizes; the last one is the common interaction dim D."""
    over_arch: list[int] = field(default_factory=lambda: [64, 32])
    """Top MLP hidden sizes (a final 1-unit layer is appended)."""
    cross_layers: int = 3
    """DCN: number of low-rank cross layers."""
    cross_rank: int = 16
    """DCN: rank of each cross layer."""
    num_layers: int = 3
    """LightGCN propagation layers."""


@dataclass
class TrainConfig:
    """Optimisation and evaluation; used by `train` and by every retraining inside a search."""

    seed: int = 0
    """Seed of initialisation and shuffling."""
    batch_size: int = 512
    """Examples per step per rank."""
    eval_batch_size: int = 4096
    """Examples per evaluation step per rank."""
    limit_val_batches: int = 0
    """CTR: evaluate on the first this many validation batches per rank (0 = all), as TorchRec's DLRM
    example's `--limit_val_batches`. Exact AUC keeps every evaluated row's prediction, so on very large
    splits this bounds evaluation memory and time."""
    limit_test_batches: int = 0
    """CTR: the same for the test split (0 = all)."""
    epochs: int = 3
    """Maximum epochs."""
    max_steps: int = 0
    """Stop after this many steps per epoch (0 = whole epoch); for quick runs."""
    patience: int = 1
    """Early stopping: epochs without val AUC improvement before stopping."""
    embedding_optimizer: str = "rowwise_adagrad"
    """Fused table optimizer: rowwise_adagrad | adagrad | sgd."""
    embedding_lr: float = 0.05
    """Learning rate of the fused table optimizer."""
    dense_optimizer: str = "adam"
    """Dense optimizer: adam | adagrad | sgd."""
    dense_lr: float = 1e-3
    """Learning rate of the dense optimizer."""
    allreduce_precision: str = "fp32"
    """Precision of the dense gradients' all-reduce across processes: fp32 | fp16 | bf16 (CUDA only)
    (TorchRec's `DefaultDataParallelWrapper(allreduce_comm_precision=...)`: half the bytes on the wire)."""
    weight_decay: float = 0.0
    """Dense weight decay."""
    checkpoint: bool = True
    """Write a DCP checkpoint each epoch and resume from the last one."""
    resume: bool = True
    """Resume from the run directory's checkpoints (they must belong to the same config, data and seed).
    false: start fresh: ignore and replace existing checkpoints."""
    log_every: int = 50
    """TensorBoard scalar interval in steps."""
    progress: bool = True
    """Show tqdm progress bars on rank 0."""
    ranking_k: list[int] = field(default_factory=lambda: [5, 10, 20])
    """CF: K values of Recall@K / NDCG@K."""


@dataclass
class PlanConfig:
    """Topology for the sharding plan written into the run directory."""

    world_size: int = 0
    """Ranks to plan for (0 = the current world size)."""
    device: str = "cpu"
    """cpu | cuda."""
    hbm_gb: float = 0.0
    """Per-device HBM cap in GiB for cuda (0 = TorchRec's default)."""
    ddr_gb: float = 0.0
    """Per-host DDR cap in GiB (0 = TorchRec's default)."""
    file: str = ""
    """`train`: shard with this plan file (e.g. `torchrec-aes plan RUN --world-size N --out PLAN.json`)
    instead of planning; it must cover the architecture's tables at their sizes, for this job's world size
    and device, or the run stops with a one-line error naming what differs."""


# ---------------------------------------------------------------------------------------------------------
# Method sections: registered by the method packages (search/<method>/config.py)
# ---------------------------------------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {}
_CHECKS: dict[str, Callable[[Any], None]] = {}


def register_section(name: str, cls: type, check: Callable[[Any], None] | None = None) -> type:
    """Registers a search method's config dataclass as section `search.<name>`, with its range checks.

    A method's config module calls this when it is imported; `method_sections` imports the built-in ones
    by name (`BUILTIN_SECTIONS`), so the strict loader knows every key. A section is read as
    `cfg.search.<name>` (e.g. `cfg.search.adass.rl_updates`). `check(section)` raises ValueError naming
    the `search.<name>.*` key of a bad value; `load_config` runs it, before any data is read.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config section '{name}' must be a dataclass, got {cls!r}")
    if _SECTIONS.get(name, cls) is not cls:
        raise ValueError(f"config section 'search.{name}' is registered twice")
    _SECTIONS[name] = cls
    if check is not None:
        _CHECKS[name] = check
    return cls


def unregister_section(name: str) -> None:
    """Removes section `search.<name>` (the counterpart of `register_section`, e.g. for a method a test
    registers for its own run); configs naming its keys are rejected again. A ValueError if no section has
    that name."""
    if name not in _SECTIONS:
        raise ValueError(f"config section 'search.{name}' is not registered")
    del _SECTIONS[name]
    _CHECKS.pop(name, None)


BUILTIN_SECTIONS = {
    "adass": "torchrec_aes.search.adass.config",
    "bet": "torchrec_aes.search.bet.config",
    "ihas": "torchrec_aes.search.ihas.config",
    "nasrec": "torchrec_aes.search.nasrec.config",
}
"""The built-in method sections by name -> the module that registers it: resolved by name (as torchtitan
resolves model names), so the loader never imports a method."""


def method_sections() -> dict[str, type]:
    """Every method section by name: the built-in ones (their modules imported by name) and any other
    registered."""
    for module in BUILTIN_SECTIONS.values():
        importlib.import_module(module)
    return dict(_SECTIONS)


@dataclass
class SearchConfig:
    """Which search to run and under which budget."""

    method: str = "uniform"
    """A registered search method: uniform | power_rule | adass | bet | bet_su | bet_sr | ihas | nasrec
    (`torchrec-aes search --help` lists them)."""
    budget: list[str] = field(default_factory=lambda: ["0.25 x uniform-64"])
    """Bytes ("800MB", "1.5GiB", "123456") or a fraction of a reference ("0.5 x uniform-64"); a list (YAML
    list, or comma-separated) runs one search per budget sharing what does not depend on it (AdaS&S trains
    its supernet once), each in a sub-run `RUN/budget_<i>/`, plus a quality-vs-bytes frontier in `RUN/`."""
    candidates: list[int] = field(default_factory=lambda: [4, 8, 16, 24, 32, 48, 64])
    """Candidate table dims (multiples of 4 for FBGEMM's fused kernels)."""
    count: str = "bytes"
    """What the budget counts: bytes (TorchRec's storage estimate for training: weights + optimizer state)
    | serving (TorchRec's estimate for its inference path: weights in their serving precision, int8/int4
    row-wise quantized with scale and bias) | params (the papers' convention)."""
    power_alpha: float = 0.3
    """power_rule: exponent alpha in d_f ~ n_f^-alpha."""
    frequency_blocks: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    """Where the frequency blocks of a feature end, as fractions of its ids ranked by training frequency
    (the `mde` baseline's blocks; increasing, the last 1.0). Features with few ids get fewer blocks."""
    baselines: list[str] = field(
        default_factory=lambda: ["uniform", "power_rule", "uniform_fp16", "uniform_int8", "mde", "hashed"]
    )
    """The zero-cost baselines of a final pick (those that fit the budget join): uniform, power_rule,
    uniform_fp16 (same-memory uniform in fp16), uniform_int8 (served in int8; with `search.count=serving`
    only), mde (power rule over frequency blocks, CTR), hashed (uniform at the largest candidate dim, rows
    cut by hashing, CTR)."""
    precision: str = "fp32"
    """Table precision of the zero-cost baselines (uniform, power_rule, mde, hashed): fp32 | fp16 | int8 |
    int4. fp16 halves a table's bytes (TorchRec's estimate), so at the same budget the baselines get about
    twice the dims; int8 / int4 tables train in fp32 and serve quantized, so they save bytes only under
    `search.count=serving`."""
    retrain: bool = True
    """Retrain the found architecture from scratch and report test metrics (methods without finalists)."""
    final_baselines: bool = True
    """Methods that return finalists (adass, bet, ihas, nasrec) have them trained from scratch and the best
    on validation kept; with this, the zero-cost baselines at the same budget (same-memory uniform,
    power_rule, same-memory uniform in fp16) are finalists too, so a search result never loses to a fully
    trained one on validation (`search.pick`)."""
    halving: bool = True
    """Train the finalists by successive halving over epochs (needs checkpoints); else each fully."""
    pick: str = "staged"
    """How the final pick compares finalists: staged | joint. staged: every finalist of the method trains
    fully, the zero-cost baselines are halved among themselves (`search.halving`), and the best on
    validation of the fully trained ones is kept. joint: successive halving over all finalists together
    (cheaper; drops finalists that learn more slowly than a baseline before they catch up)."""
    cache_dir: str = ""
    """Where the final pick keeps trained zero-cost baselines by identity (`baselines/<hash>/`), so a
    budget list, a rerun or another search on the same data and training config never trains the same
    baseline twice; "" = the run directory (the parent run of a budget list). Needs `train.checkpoint`."""
    sections: dict[str, Any] = field(default_factory=dict)
    """The methods' own sections by name (`search.adass`, `search.bet`, ...; see `register_section`).
    In YAML they are keys of `search` like any other; every registered section is present."""

    def __post_init__(self) -> None:
        for name, cls in method_sections().items():
            self.sections.setdefault(name, cls())

    @staticmethod
    def registered_sections() -> dict[str, type]:
        """The method sections, read as keys of `search` (`strict.from_dict`)."""
        return method_sections()

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the registered method sections.
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"search has no field or method section '{name}'")


@dataclass
class Config:
    """Everything a run needs; written resolved to `RUN/config.yaml`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    arch: str = ""
    """Architecture file to train (e.g. RUN/architecture.yaml); empty = uniform `model.embedding_dim`."""
    run_dir: str = "runs/default"
    """Output directory (local path or iopath URI)."""


# ---------------------------------------------------------------------------------------------------------
# Strict conversion
# ---------------------------------------------------------------------------------------------------------


def config_from_dict(data: dict) -> Config:
    """Builds a Config from a nested dict, strictly."""
    return from_dict(Config, data or {})


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Loads defaults < YAML file < overrides into a validated Config.

    Args:
        path: YAML file (local or iopath URI); None for defaults only.
        overrides: `a.b.c=value` strings.

    Raises:
        ConfigError: unknown key, wrong type, or invalid value (message names the key); a file that is
            not a readable YAML mapping (message names the file, and the line of a syntax error).
        ConfigFileNotFoundError: `path` does not exist.
    """
    data = read_mapping(path) if path else {}
    for override in overrides or []:
        try:
            apply_overrides(data, [override])
        except yaml.YAMLError as e:
            raise ConfigError(str(yaml_error(f"override '{override}'", e))) from None
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    validate(cfg)
    return cfg


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


_POSITIVE, _NON_NEGATIVE = "> 0", ">= 0"

# Range of every numeric field of the core sections: (dotted key, check, what is allowed). Method sections
# (`search.adass`, `search.bet`, ...) check their own fields in their packages.
_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.split_seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2^32)"),
    ("data.min_count", _non_negative, _NON_NEGATIVE),
    ("data.hash_size", _non_negative, ">= 0 (0 = build a vocabulary)"),
    ("data.max_rows", _non_negative, ">= 0 (0 = all rows)"),
    ("data.num_embeddings_per_feature", lambda v: all(x > 0 for x in v), "sizes > 0 (empty: from the ids)"),
    ("data.stream_chunk_rows", _positive, _POSITIVE),
    ("data.in_memory_max_mb", _non_negative, _NON_NEGATIVE),
    ("data.field_offsets", lambda v: all(x >= 0 for x in v) and v == sorted(set(v)), "ascending, >= 0"),
    ("data.synthetic.num_examples", lambda v: v >= 10, ">= 10 (the 8:1:1 split needs rows in each part)"),
    ("data.synthetic.num_dense", _non_negative, _NON_NEGATIVE),
    ("data.synthetic.cardinalities", lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of sizes > 0"),
    ("data.synthetic.true_ranks", lambda v: v is None or all(0 <= r < 2**15 for r in v), "in [0, 2^15)"),
    ("data.synthetic.zipf_exponent", _positive, _POSITIVE),
    ("data.synthetic.signal_scale", _non_negative, _NON_NEGATIVE),
    ("data.synthetic.populations", _positive, ">= 1 (1 = a single population)"),
    (
        "data.synthetic.population_ranks",
        lambda v: v is None or all(0 <= r < 2**15 for ranks in v for r in ranks),
        "null or lists of ranks in [0, 2^15)",
    ),
    ("model.embedding_dim", _positive, _POSITIVE),
    ("model.dense_arch", lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of layer sizes > 0"),
    ("model.over_arch", lambda v: min(v, default=1) > 0, "layer sizes > 0 (a 1-unit layer is appended)"),
    ("model.cross_layers", _non_negative, _NON_NEGATIVE),
    ("model.cross_rank", _positive, _POSITIVE),
    ("model.num_layers", _non_negative, _NON_NEGATIVE),
    ("train.seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2^32)"),
    ("train.batch_size", _positive, _POSITIVE),
    ("train.eval_batch_size", _positive, _POSITIVE),
    ("train.limit_val_batches", _non_negative, ">= 0 (0 = all validation batches)"),
    ("train.limit_test_batches", _non_negative, ">= 0 (0 = all test batches)"),
    ("train.epochs", _positive, _POSITIVE),
    ("train.max_steps", _non_negative, ">= 0 (0 = whole epochs)"),
    ("train.patience", _non_negative, ">= 0 (epochs without a new best before stopping)"),
    ("train.embedding_lr", _positive, _POSITIVE),
    ("train.dense_lr", _positive, _POSITIVE),
    ("train.weight_decay", _non_negative, _NON_NEGATIVE),
    ("train.log_every", _positive, "> 0 (steps between TensorBoard scalars)"),
    ("train.ranking_k", lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of K > 0"),
    ("plan.world_size", _non_negative, ">= 0 (0 = the current world size)"),
    ("plan.hbm_gb", _non_negative, ">= 0 (0 = TorchRec's default)"),
    ("plan.ddr_gb", _non_negative, ">= 0 (0 = TorchRec's default)"),
    ("search.power_alpha", _non_negative, _NON_NEGATIVE),
    ("data.max_ids_per_row", _non_negative, ">= 0 (0 = no limit)"),
]


BASELINES = ("uniform", "power_rule", "uniform_fp16", "uniform_int8", "mde", "hashed")
"""The zero-cost baselines a final pick may train (`search.baselines`)."""


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> None:
    """Checks values that types alone do not constrain: choices, ranges, and the forms of composite
    fields (split, candidates, budget); every error names the dotted key, the value and what is allowed.

    Raises:
        ConfigError: the first invalid value.
    """
    choices = {
        "data.type": (
            cfg.data.type,
            ("synthetic", "criteo", "tabular", "libfm", "criteo_binary", "interactions"),
        ),
        "model.type": (cfg.model.type, ("dlrm", "dcn", "mf", "lightgcn")),
        "model.data_type": (cfg.model.data_type, ("fp32", "fp16", "int8", "int4")),
        "search.precision": (cfg.search.precision, ("fp32", "fp16", "int8", "int4")),
        "search.pick": (cfg.search.pick, ("staged", "joint")),
        "train.embedding_optimizer": (cfg.train.embedding_optimizer, ("rowwise_adagrad", "adagrad", "sgd")),
        "train.dense_optimizer": (cfg.train.dense_optimizer, ("adam", "adagrad", "sgd")),
        "train.allreduce_precision": (cfg.train.allreduce_precision, ("fp32", "bf16", "fp16")),
        "plan.device": (cfg.plan.device, ("cpu", "cuda")),
        "search.count": (cfg.search.count, ("bytes", "serving", "params")),
        "data.streaming": (cfg.data.streaming, ("auto", "always", "never")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    for key, ok, expected in _RANGES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} is out of range; expected {expected}")
    bad_pooling = {k: v for k, v in cfg.data.pooling.items() if v not in ("sum", "mean")}
    if bad_pooling:
        key, value = next(iter(bad_pooling.items()))
        raise ConfigError(f"data.pooling.{key}: '{value}' is not one of sum, mean")
    if not cfg.data.multi_hot_separator or cfg.data.multi_hot_separator == cfg.data.delimiter:
        raise ConfigError(
            f"data.multi_hot_separator: {cfg.data.multi_hot_separator!r} must be non-empty and differ from "
            f"data.delimiter ({cfg.data.delimiter!r})"
        )
    if len(cfg.data.split) != 3 or abs(sum(cfg.data.split) - 1.0) > 1e-6 or min(cfg.data.split) <= 0:
        raise ConfigError(f"data.split: expected three positive fractions summing to 1, got {cfg.data.split}")
    bad = [d for d in cfg.search.candidates if d <= 0 or d % 4]
    if bad or not cfg.search.candidates:
        raise ConfigError(
            f"search.candidates: {cfg.search.candidates} must be non-empty multiples of 4 "
            "(FBGEMM's fused kernels need dims divisible by 4)"
        )
    blocks = cfg.search.frequency_blocks
    if not blocks or blocks[-1] != 1.0 or any(b <= a for a, b in zip([0.0, *blocks], blocks, strict=False)):
        raise ConfigError(
            f"search.frequency_blocks: {blocks} must be increasing fractions in (0, 1], the last 1.0"
        )
    unknown = sorted(set(cfg.search.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"search.baselines: {unknown} are not baselines; allowed: {', '.join(BASELINES)}")
    if not cfg.run_dir.strip():
        raise ConfigError("run_dir: must not be empty (the directory every artifact of the run goes to)")
    if cfg.arch and is_local(cfg.arch):
        # Imported here for start-up time: `load_config` of a config without `arch` stays free of TorchRec.
        from torchrec_aes.architecture import Architecture, architecture_file

        path = architecture_file(cfg.arch).removeprefix("file://")
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "no such file"
            raise ConfigError(f"arch: {path}: {what} (expected an architecture.yaml or a run directory)")
        try:  # its form (syntax, keys, truncation) now; whether it fits the data once that is read
            Architecture.load(path)
        except ValueError as e:
            raise ConfigError(f"arch: {e}") from None
    _check_budget_form(cfg)
    for name, check in _CHECKS.items():  # every method section's own ranges
        try:
            check(getattr(cfg.search, name))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_budget_form(cfg: Config) -> None:
    """Parses each `search.budget` against an empty schema: its form and number are checked at load; what
    it amounts to needs the data (`Budget.parse` again, with the schema)."""
    # Imported here for start-up time (the planner's estimates import TorchRec); Schema is empty here.
    from torchrec_aes.planning.memory import Budget, Schema

    if not cfg.search.budget:
        raise ConfigError("search.budget: [] is empty; expected at least one budget, e.g. '0.5 x uniform-64'")
    for i, text in enumerate(cfg.search.budget):
        key = "search.budget" if len(cfg.search.budget) == 1 else f"search.budget[{i}]"
        try:
            Budget.parse(text, Schema(), cfg.train.embedding_optimizer, cfg.search.count)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None


def save_config(cfg: Config, path: str) -> None:
    """Writes the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
