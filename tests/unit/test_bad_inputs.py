"""Every bad input a user can give the CLI is one line on stderr naming the key, file or line, and exit 2.

The corpus: config values (unknown keys, wrong types, every range), config files, run directories,
architecture files (syntax, missing keys, truncation, tables that do not match the data), budgets,
`plan` arguments, a checkpoint of another run, and plan files. The CLI runs in-process
(`torchrec_aes.cli.main`), on the tiny synthetic config; no case gets as far as training. Reader input is
`test_bad_data.py`'s corpus; a few of its files run through the CLI here too, to check the mapping.

Plan files have no CLI command that reads them (`torchrec-aes plan` writes one); they go through
`plan_io.load_plan` and the CLI's classification of errors (`errors.user_error_message`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from torchrec_aes.architecture import Architecture
from torchrec_aes.cli import main
from torchrec_aes.config import load_config
from torchrec_aes.errors import user_error_message
from torchrec_aes.planning.plan_io import PLAN_FORMAT, load_plan
from torchrec_aes.tasks import get_task

TINY = str(REPO / "configs" / "tests" / "tiny.yaml")
CORPUS = REPO / "tests" / "data" / "bad"


@dataclass
class Env:
    """What the cases build their arguments from."""

    tmp: Path
    cache: Path
    arch: Architecture  # uniform dim 8 over the tiny config's data

    def base(self, command: str = "train") -> list[str]:
        return [
            command,
            TINY,
            "--run-dir",
            str(self.tmp / "run"),
            f"data.cache_dir={self.cache}",
            "train.epochs=1",
            "train.progress=false",
        ]

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def arch_file(self, name: str = "architecture.yaml", edit: Callable[[dict], None] | None = None) -> str:
        path = self.tmp / name
        self.arch.save(str(path))
        if edit is not None:
            data = yaml.safe_load(path.read_text())
            edit(data)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def truncated_arch(self, tables: int) -> str:
        """The architecture file cut right after `tables` tables (a table boundary)."""
        path = Path(self.arch_file("full.yaml"))
        lines = path.read_text().splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.startswith("- name:")]
        return self.file("truncated.yaml", "".join(lines[: starts[tables]]))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad_inputs")
    cache = root / "cache"
    schema = get_task(load_config(TINY, [f"data.cache_dir={cache}"])).schema
    return Env(root, cache, Architecture.uniform(schema, 8))


# Each case: Env -> (argv, substrings the one error line must contain).
Case = Callable[[Env], tuple[list[str], list[str]]]


def _override(key_value: str, *named: str, command: str = "train") -> Case:
    return lambda e: (e.base(command) + [key_value], [key_value.split("=")[0], *named])


def _drop_key(key: str) -> Callable[[dict], None]:
    return lambda d: d["tables"][1].pop(key)


CASES: dict[str, Case] = {
    # --- config keys and types
    "unknown key": _override("train.epoch=3", "unknown config key 'train.epoch'"),
    "unknown section": lambda e: (e.base() + ["trainer.epochs=3"], ["unknown config key 'trainer'"]),
    "unknown nested key": _override("data.synthetic.rows=5", "'data.synthetic.rows'"),
    "integer given text": _override("train.epochs=abc", "expected an integer, got 'abc'"),
    "integer given a fraction": _override("train.epochs=1.5", "expected an integer"),
    "integer 1e400": _override("train.epochs=1e400", "expected an integer"),
    "bool given text": _override("train.checkpoint=maybe", "expected true/false"),
    "number given text": _override("train.dense_lr=fast", "expected a number"),
    "number nan": _override("train.embedding_lr=nan", "expected a finite number"),
    "list given a mapping": _override("model.over_arch={a: 1}", "expected a list"),
    "section given a number": _override("train=5", "expected a mapping"),
    "unknown choice": _override("model.type=xgboost", "'xgboost' is not one of"),
    "override without =": lambda e: (e.base() + ["train"], ["unrecognized arguments: train", "a.b.c=value"]),
    "override with bad YAML": _override("train.epochs=[1", "override 'train.epochs=[1'", "not valid YAML"),
    # --- ranges (first the values that parse as the right type but would run wrongly)
    "train.max_steps=-5": _override("train.max_steps=-5", "-5", ">= 0"),
    "model.over_arch=[0]": _override("model.over_arch=[0]", "[0]", "> 0"),
    "model.dense_arch=[]": _override("model.dense_arch=[]", "[]", "non-empty"),
    "train.patience=-1": _override("train.patience=-1", "-1", ">= 0"),
    "train.log_every=0": _override("train.log_every=0", "0", "> 0"),
    "plan.world_size=-2": _override("plan.world_size=-2", "-2", ">= 0"),
    "train.batch_size=0": _override("train.batch_size=0", "> 0"),
    "train.eval_batch_size=-1": _override("train.eval_batch_size=-1", "> 0"),
    "train.epochs=0": _override("train.epochs=0", "> 0"),
    "train.seed=-1": _override("train.seed=-1", "[0, 2^32)"),
    "train.dense_lr=-0.1": _override("train.dense_lr=-0.1", "> 0"),
    "train.embedding_lr=0": _override("train.embedding_lr=0", "> 0"),
    "train.weight_decay=-1": _override("train.weight_decay=-1", ">= 0"),
    "train.ranking_k=[0]": _override("train.ranking_k=[0]", "K > 0"),
    "model.embedding_dim=0": _override("model.embedding_dim=0", "> 0"),
    "model.cross_rank=0": _override("model.cross_rank=0", "> 0"),
    "model.num_layers=-1": _override("model.num_layers=-1", ">= 0"),
    "plan.hbm_gb=-1": _override("plan.hbm_gb=-1", ">= 0"),
    "plan.ddr_gb=inf": _override("plan.ddr_gb=inf", "finite"),
    "data.max_rows=-1": _override("data.max_rows=-1", ">= 0"),
    "data.hash_size=-3": _override("data.hash_size=-3", ">= 0"),
    "data.split": _override("data.split=[0.5,0.5,0.5]", "summing to 1"),
    "data.synthetic.num_examples=0": _override("data.synthetic.num_examples=0", ">= 10"),
    "data.synthetic.cardinalities=[0]": _override("data.synthetic.cardinalities=[0]", "> 0"),
    "search.candidates=[4,6]": _override("search.candidates=[4,6]", "multiples of 4", command="search"),
    "search.power_alpha=-1": _override("search.power_alpha=-1", ">= 0", command="search"),
    # --- config files and run directories
    "config path is a directory": lambda e: (["train", str(REPO / "configs")], ["configs", "is a directory"]),
    "config file missing": lambda e: (["train", str(e.tmp / "nope.yaml")], ["nope.yaml", "no such"]),
    "config YAML syntax error": lambda e: (
        ["train", e.file("syntax.yaml", "train:\n  epochs: 2\n  seed: [1, 2\n")],
        ["syntax.yaml:4:1", "not valid YAML"],
    ),
    "config top level is a list": lambda e: (["train", e.file("list.yaml", "- 1\n- 2\n")], ["list.yaml"]),
    "config not UTF-8": lambda e: (["train", e.file("latin1.yaml", b"run_dir: caf\xe9\n")], ["latin1.yaml"]),
    "empty run_dir": lambda e: (
        ["train", TINY, f"data.cache_dir={e.cache}", "run_dir="],
        ["run_dir", "must not be empty"],
    ),
    "run_dir is a file": lambda e: (
        ["train", TINY, "--run-dir", e.file("a_file", "x"), f"data.cache_dir={e.cache}"],
        ["run_dir", "a_file", "is a file"],
    ),
    "run_dir below a file": lambda e: (
        ["train", TINY, "--run-dir", e.file("b_file", "x") + "/run", f"data.cache_dir={e.cache}"],
        ["run_dir", "b_file/run"],
    ),
    # --- architecture files (train arch=FILE)
    "arch file missing": _override("arch=/nonexistent/architecture.yaml", "/nonexistent/architecture.yaml"),
    "arch YAML syntax error": lambda e: (
        e.base() + ["arch=" + e.file("arch_syntax.yaml", "tables:\n- name: [t_c0\n")],
        ["arch", "arch_syntax.yaml:3:1", "not valid YAML"],
    ),
    "arch missing a key": lambda e: (
        e.base() + [f"arch={e.arch_file('no_dim.yaml', _drop_key('embedding_dim'))}"],
        ["no_dim.yaml", "tables[1]", "embedding_dim"],
    ),
    "arch rows not a number": lambda e: (
        e.base()
        + [f"arch={e.arch_file('rows.yaml', lambda d: d['tables'][0].update(num_embeddings='many'))}"],
        ["rows.yaml", "tables[0].num_embeddings", "'many'"],
    ),
    "arch truncated at a table boundary": lambda e: (
        e.base() + [f"arch={e.truncated_arch(2)}"],
        ["truncated.yaml", "2 tables but num_tables says 6", "truncated"],
    ),
    "arch truncated mid-line": lambda e: (
        e.base() + [f"arch={e.file('cut.yaml', Path(e.arch_file('whole.yaml')).read_text()[:-2])}"],
        ["cut.yaml", "truncated"],
    ),
    "arch unknown kind": lambda e: (
        e.base() + [f"arch={e.arch_file('kind.yaml', lambda d: d.update(kind='graph'))}"],
        ["kind.yaml", "kind 'graph'"],
    ),
    "arch missing a table": lambda e: (
        e.base()
        + [f"arch={e.arch_file('missing.yaml', lambda d: (d['tables'].pop(2), d.update(num_tables=5)))}"],
        ["missing.yaml", "no table for data feature(s) c2"],
    ),
    "arch extra table": lambda e: (
        e.base()
        + [
            "arch="
            + e.arch_file(
                "extra.yaml",
                lambda d: (
                    d["tables"].append(
                        {"name": "t_z", "feature_names": ["z"], "num_embeddings": 5, "embedding_dim": 8}
                    ),
                    d.update(num_tables=7),
                ),
            )
        ],
        ["extra.yaml", "feature 'z', which the data does not have"],
    ),
    "arch too few rows": lambda e: (
        e.base() + [f"arch={e.arch_file('rows2.yaml', lambda d: d['tables'][2].update(num_embeddings=10))}"],
        ["rows2.yaml", "'t_c2' has 10 rows"],
    ),
    # --- budgets (search)
    "budget garbage": _override("search.budget=lots", "'lots'", "Accepted forms", command="search"),
    "budget negative": _override("search.budget=-5MB", "'-5MB'", command="search"),
    # Quoted: an unquoted number is read as YAML (an int), which search.budget (a list) does not take.
    "budget 0": _override("search.budget='0'", "must be positive", command="search"),
    "budget 1e400": _override("search.budget=1e400", "'1e400' is too large", command="search"),
    "budget 0 x uniform": _override("search.budget=0 x uniform-16", "fraction 0", command="search"),
    "budget of a missing file": _override(
        "search.budget=0.5 x /nonexistent/a.yaml", "/nonexistent/a.yaml", command="search"
    ),
    "budget fractional world size": _override(
        "search.budget=1.5 x 16GiB", "world size 1.5", command="search"
    ),
    "budget below the smallest architecture": lambda e: (
        e.base("search") + ["search.budget=1KB"],
        ["budget '1KB'", "below the smallest possible architecture"],
    ),
    "budget empty list": _override("search.budget=[]", "empty", command="search"),
    # --- data (the readers' corpus, through the CLI)
    "data file missing": lambda e: (
        e.base() + ["data.type=criteo", "data.path=/nonexistent/x.txt"],
        ["data.path", "/nonexistent/x.txt"],
    ),
    "data path is a directory": lambda e: (
        e.base() + ["data.type=criteo", f"data.path={CORPUS}"],
        [str(CORPUS), "directory"],
    ),
    "data truncated gzip": lambda e: (
        e.base()
        + ["data.type=criteo", "data.path=" + e.file("t.txt.gz", gzip.compress(b"0\t1\n" * 2000)[:-30])],
        ["t.txt.gz"],
    ),
    "data unclosed quote": lambda e: (
        e.base()
        + [
            "data.type=tabular",
            f"data.path={CORPUS / 'tabular_unclosed_quote.csv'}",
            "data.label_column=click",
            "data.sparse_columns=[site,device]",
            "data.dense_columns=[price]",
        ],
        ["tabular_unclosed_quote.csv:5", "quote never closed"],
    ),
    # --- plan command arguments
    "plan --world-size 0": lambda e: (["plan", e.arch_file(), "--world-size", "0"], ["--world-size", "0"]),
    "plan --hbm-gb -1": lambda e: (
        ["plan", e.arch_file(), "--world-size", "2", "--hbm-gb", "-1"],
        ["--hbm-gb", "-1"],
    ),
    "plan of a truncated architecture": lambda e: (
        ["plan", e.truncated_arch(3), "--world-size", "2"],
        ["truncated.yaml", "truncated"],
    ),
    "plan of a run directory without architecture": lambda e: (
        ["plan", str(e.tmp), "--world-size", "2"],
        [f"{e.tmp}/architecture.yaml", "no such file"],
    ),
}


def _run_cli(argv: list[str], capsys) -> tuple[int | str | None, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    return exit_info.value.code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_it_and_exit_2(env, tmp_path, capsys, case) -> None:
    env = Env(tmp_path, env.cache, env.arch)
    argv, named = CASES[case](env)
    code, lines = _run_cli(argv, capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"torchrec-aes {argv[0]}: error: "), lines[0]
    for text in named:
        assert text in lines[0], (text, lines[0])


def test_checkpoint_of_another_seed_is_one_line_naming_the_seed_and_exit_2(env, tmp_path, capsys) -> None:
    args = env.base() + ["train.max_steps=2", "train.epochs=1"]
    main(args)  # a finished run with a checkpoint
    capsys.readouterr()
    code, lines = _run_cli(args + ["train.seed=1"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "train.seed 0 vs 1" in lines[0] and "train.resume=false" in lines[0]
    code = main(args + ["train.seed=1", "train.resume=false"])  # starts fresh
    assert code is None


# --- plan files ---------------------------------------------------------------------------------------

_SHARD = {"offsets": [0, 0], "sizes": [10, 8], "placement": "rank:0/cpu"}
_PARAM = {"sharding_type": "table_wise", "compute_kernel": "fused", "ranks": [0], "shards": [_SHARD]}
_PLAN = {"format": PLAN_FORMAT, "version": 1, "metadata": {}, "plan": {"model.sparse_arch": {"t_c0": _PARAM}}}


def _plan_with(**changes: object) -> str:
    param = {**_PARAM, **changes}
    return json.dumps({**_PLAN, "plan": {"model.sparse_arch": {"t_c0": param}}})


PLAN_CASES: dict[str, tuple[str | bytes | None, list[str]]] = {
    "not JSON": ("plan: yes", ["line 1"]),
    "truncated JSON": (json.dumps(_PLAN)[:40], ["not valid JSON"]),
    "empty file": ("", ["not valid JSON"]),
    "not UTF-8": (b'{"format": "\xff"}', ["UTF-8"]),
    "a list": ("[1, 2]", ["expected a mapping"]),
    "wrong format": (json.dumps({**_PLAN, "format": "other"}), ["format 'other'"]),
    "unknown top key": (json.dumps({**_PLAN, "extra": 1}), ["unknown keys ['extra']"]),
    "missing plan": (json.dumps({"format": PLAN_FORMAT, "version": 1}), ["missing keys ['plan']"]),
    "unknown sharding type": (_plan_with(sharding_type="diagonal"), ["t_c0", "sharding_type 'diagonal'"]),
    "missing compute kernel": (
        json.dumps({**_PLAN, "plan": {"model.sparse_arch": {"t_c0": {"sharding_type": "table_wise"}}}}),
        ["t_c0", "compute_kernel"],
    ),
    "ranks not a list": (_plan_with(ranks=3), ["t_c0", "ranks"]),
    "ranks not numbers": (_plan_with(ranks=["a"]), ["t_c0", "ranks"]),
    "shards not a list": (_plan_with(shards=5), ["t_c0", "shards"]),
    "shard placement garbage": (_plan_with(shards=[{**_SHARD, "placement": "moon"}]), ["shards[0]"]),
    "shard sizes not numbers": (_plan_with(shards=[{**_SHARD, "sizes": ["x", 8]}]), ["shards[0]"]),
    "ranks and shards disagree": (_plan_with(ranks=[0, 1]), ["t_c0", "2 ranks", "1 shards"]),
    "bad bounds check mode": (_plan_with(bounds_check_mode="SOMETIMES"), ["bounds_check_mode"]),
    "cache params not a mapping": (_plan_with(cache_params=[1]), ["cache_params"]),
    "missing file": (None, ["no such file"]),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_bad_plan_file_is_a_one_line_user_error_naming_the_file(tmp_path, case) -> None:
    text, named = PLAN_CASES[case]
    path = tmp_path / "plan.json"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(Exception) as error:
        load_plan(str(path))
    message = user_error_message(error.value)
    assert message is not None, f"classified as a bug: {error.value!r}"
    assert "\n" not in message and str(path) in message, message
    for text_ in named:
        assert text_ in message, (text_, message)


def test_valid_plan_file_of_the_corpus_loads(tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_PLAN))
    assert list(load_plan(str(path)).plan) == ["model.sparse_arch"]
