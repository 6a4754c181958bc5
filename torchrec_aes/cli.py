"""`torchrec-aes {train,search,plan}`: thin argument parsing over torchrec_aes.runs.

Every command runs unchanged under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU).

Exit codes: 0 done; 2 a user error (bad config key or value, missing or unreadable file, malformed data
row, infeasible budget, a plan that does not fit, a checkpoint of another run): one line
`torchrec-aes <cmd>: error: ...` on stderr; 1 a bug: the traceback and a line saying so. What counts as a
user error is `torchrec_aes.errors.user_error_message`.

Under torchrun every rank that meets a user error exits 2 and rank 0 prints the line (the others, which
normally fail alike, are stopped by torchrun meanwhile; a rank that failed alone prints it naming itself).
torchrun itself then exits 1 (its `ChildFailedError`) with a summary naming the first failed rank and its
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import NoReturn

from torchrec_aes.config import load_config
from torchrec_aes.errors import UserError, user_error_message
from torchrec_aes.io import is_local

# Libraries whose warnings are noise to a user (TorchRec and FBGEMM warn a lot on CPU, about their own
# deprecations); warnings issued from torchrec_aes itself stay visible.
_NOISY_MODULES = r"(torch|torchrec|fbgemm_gpu|torchmetrics|torchx|tensorboard|iopath)(\.|$)"

_PEER_GRACE_SECONDS = 3.0
"""How long a rank other than 0 waits before reporting a user error itself (see `main`)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _quiet() -> None:
    """Keeps the output to what a user needs: library warnings and logs below ERROR are dropped."""
    warnings.filterwarnings("ignore", module=_NOISY_MODULES)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    for name in ("torchrec", "fbgemm_gpu", "torch", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("torchrec_aes").setLevel(logging.INFO if _rank() == 0 else logging.ERROR)


def _check_run_dir(path: str) -> None:
    """Fails fast (before any data is read) if the run directory cannot be created or written."""
    if not is_local(path):
        return
    local = path.removeprefix("file://")
    if os.path.exists(local) and not os.path.isdir(local):
        raise UserError(f"run_dir: {local}: is a file (expected a directory)")
    try:
        os.makedirs(local, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=local, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"run_dir: {local}: cannot write there ({e.strerror or e})") from None


def _load(args: argparse.Namespace):
    # --run-dir goes through the config's own validation (a JSON string is a quoted YAML scalar).
    overrides = list(args.overrides) + ([f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    _check_run_dir(cfg.run_dir)
    return cfg


def _train(args: argparse.Namespace) -> None:
    from torchrec_aes import runs  # start-up time: `--help` and config errors answer without TorchRec

    cfg = _load(args)
    metrics = runs.run_train(cfg)
    if _rank() == 0:
        test = metrics["test"]
        print("test " + " ".join(f"{k}={v:.4f}" for k, v in sorted(test.items())))
        print(f"run directory: {cfg.run_dir}")


def _search(args: argparse.Namespace) -> None:
    from torchrec_aes import planning, runs  # start-up time, as in `_train`

    format_amount, format_bytes = planning.memory.format_amount, planning.memory.format_bytes
    cfg = _load(args)
    metrics = runs.run_search(cfg)
    if _rank() == 0:
        for m in metrics.get("budgets", [metrics]):  # a budget list: one line block per budget
            dims = " ".join(f"{k.removeprefix('t_')}={v}" for k, v in m["dims"].items())
            winner = f" (final pick: {m['winner']})" if "winner" in m else ""
            print(f"{metrics['method']}{winner}: dims {dims}")
            used, budget, count = m["budget_used"], m["budget_bytes"], m.get("budget_count", "bytes")
            size = format_bytes(m["embedding_bytes"])
            served = format_bytes(m.get("serving_bytes", m["embedding_bytes"]))
            print(
                f"embedding {count} {format_amount(used, count)} <= budget {format_amount(budget, count)} "
                f"({used / max(budget, 1):.0%} used; TorchRec's estimate: {size} to train, {served} to serve)"
            )
            if m.get("test"):
                print("test " + " ".join(f"{k}={v:.4f}" for k, v in sorted(m["test"].items())))
        print(f"run directory: {cfg.run_dir} (report.md, architecture.yaml, plan.json, metrics.json, tb/)")


def _plan(args: argparse.Namespace) -> None:
    from torchrec_aes import architecture, planning, rundir  # start-up time, as in `_train`

    Architecture, save_plan = architecture.Architecture, planning.plan_io.save_plan
    pools_tables = architecture.pools_tables
    make_topology, plan_architecture = planning.plan.make_topology, planning.plan.plan_architecture
    plan_summary, format_plan_summary = planning.plan.plan_summary, planning.plan.format_plan_summary

    for flag, value, ok in (
        ("--world-size", args.world_size, args.world_size >= 1),
        ("--hbm-gb", args.hbm_gb, 0 <= args.hbm_gb < float("inf")),
        ("--ddr-gb", args.ddr_gb, 0 <= args.ddr_gb < float("inf")),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
    ):
        if not ok:
            raise UserError(f"{flag}: {value} is out of range; expected {'>= 0' if 'gb' in flag else '>= 1'}")
    path = rundir.architecture_file(args.arch)
    arch = Architecture.load(path)
    plan = plan_architecture(
        arch,
        args.world_size,
        args.device,
        args.hbm_gb,
        args.ddr_gb,
        args.batch_size,
        args.optimizer,
        module_path=args.module_path
        or ("model.sparse_arch.inner" if pools_tables(arch) else "model.sparse_arch"),
    )
    topology = make_topology(args.world_size, args.device, args.hbm_gb, args.ddr_gb)
    rows = plan_summary(plan, arch, topology, args.batch_size, args.optimizer)
    print(format_plan_summary(rows, topology))
    out = args.out or os.path.join(os.path.dirname(path), f"plan_{args.world_size}x{args.device}.json")
    options = {k: v for k, v in vars(args).items() if k not in ("fn", "command", "out")}
    save_plan(plan, out, metadata={"topology": options | {"arch": path}})
    print(f"plan written to {out}")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (exit 2); `--help` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="torchrec-aes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("train", _train, "train an architecture (uniform dims, or arch=RUN/architecture.yaml)"),
        ("search", _search, "search an architecture under a budget, retrain it, plan it, report"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="YAML config (see configs/)")
        p.add_argument("--run-dir", default="", help="output directory (overrides run_dir)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
        p.set_defaults(fn=fn)
    p = sub.add_parser("plan", help="sharding plan of an architecture for a topology")
    p.add_argument("arch", help="architecture.yaml or a run directory")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--hbm-gb", type=float, default=0.0, help="HBM per device in GiB (0 = TorchRec default)")
    p.add_argument("--ddr-gb", type=float, default=0.0, help="DDR per host in GiB (0 = TorchRec default)")
    p.add_argument("--batch-size", type=int, default=512, help="per-rank batch size")
    p.add_argument("--optimizer", default="rowwise_adagrad", help="fused table optimizer")
    p.add_argument(
        "--module-path",
        default="",
        help="where the EBC sits in the DMP-wrapped model (default: where our trainer puts it, "
        "model.sparse_arch, or model.sparse_arch.inner for frequency buckets)",
    )
    p.add_argument("--out", default="", help="plan file (default: beside the architecture)")
    p.set_defaults(fn=_plan)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # Overrides may come before or after options (`train C --run-dir R k=v`); argparse stops collecting a
    # positional list at the first option, so the rest arrives here.
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.exit(
            2,
            f"torchrec-aes {args.command}: error: unrecognized arguments: {' '.join(bad)} (overrides look "
            f"like a.b.c=value; see torchrec-aes {args.command} --help)\n",
        )
    if extra:
        args.overrides = list(args.overrides) + extra
    _quiet()
    try:
        args.fn(args)
        from torchrec_aes.train.distributed import shutdown_distributed  # start-up time, as in `_train`

        shutdown_distributed()
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            traceback.print_exc()
            print(
                f"torchrec-aes {args.command}: internal error: {type(e).__name__} (a bug in torchrec-aes or "
                "a library it calls, not in your input; please report it with the traceback above)",
                file=sys.stderr,
            )
            sys.exit(1)
        # Every rank holds the same config and data, so they normally fail alike: rank 0 prints the line.
        # The others wait first: torchrun stops them once rank 0 has exited, so only a rank that failed
        # alone gets to print (naming itself), and rank 0 is not killed before its line is out.
        prefix = ""
        if _rank() != 0:
            time.sleep(_PEER_GRACE_SECONDS)
            prefix = f"(rank {_rank()}) "
        print(f"torchrec-aes {args.command}: error: {prefix}{message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
