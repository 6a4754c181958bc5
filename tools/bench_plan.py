"""Benchmark: planning Criteo-1TB-sized tables for large simulated GPU clusters, on the meta device.

Plans the 26 Criteo-1TB tables (mixed dims) for 8, 64 and 512 simulated cuda devices with 80 GiB HBM each,
without materialising any weight, and prints planning time and peak host memory per topology. Each
topology runs in a fresh child process, so its peak RSS (`ru_maxrss`) is its own.

Then it plans the AdaS&S supernet of Criteo-1TB for 64 devices: AdaS&S trains one elastic EBC with every
table at the largest candidate dim (64 by default, `search.candidates`) and samples prefixes of it, so the
supernet's tables are uniform-64 over the 26 Criteo-1TB cardinalities (`--dims supernet`).

    .venv/bin/python tools/bench_plan.py                     # power-rule dims, 8/64/512 devices + supernet
    .venv/bin/python tools/bench_plan.py --dims pattern --world-sizes 8 64
    .venv/bin/python tools/bench_plan.py --world-sizes --supernet-world-size 64   # the supernet only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter

CRITEO_1TB_ROWS = [
    45833188, 36746, 17245, 7413, 20243, 3, 7114, 1441, 62, 29275261, 1572176, 345138, 10, 2209, 11267,
    128, 4, 974, 14, 48937457, 11316796, 40094537, 452104, 12606, 104, 35,
]  # fmt: skip
PATTERN = [16, 32, 64, 128, 48, 96, 24, 80]


def criteo_dims(kind: str, alpha: float = 0.3) -> list[int]:
    """Dims of the 26 tables.

    "power": the mixed-dimension power rule d ∝ n^-alpha (Ginart et al.), the largest table at 16; dims
    in 16..128 (multiples of 4).
    "pattern": a fixed cycle of `PATTERN` over the tables.
    "supernet": the AdaS&S supernet: every table at the largest default candidate (64).
    """
    if kind == "supernet":
        from torchrec_aes.config import SearchConfig

        return [max(SearchConfig().candidates)] * len(CRITEO_1TB_ROWS)
    if kind == "pattern":
        return [PATTERN[i % len(PATTERN)] for i in range(len(CRITEO_1TB_ROWS))]
    n_max = max(CRITEO_1TB_ROWS)
    return [min(128, max(16, 4 * round(16 * (n_max / n) ** alpha / 4))) for n in CRITEO_1TB_ROWS]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_one(world_size: int, dims_kind: str, hbm_gb: float, local_world_size: int, batch_size: int) -> dict:
    """Plans once in this process; returns timings and memory."""
    import torch  # noqa: F401  (imports count towards the baseline, not the planning)

    from torchrec_aes.architecture import Architecture
    from torchrec_aes.data.schema import Schema, SparseFeature
    from torchrec_aes.planning.memory import arch_bytes, meta_ebc
    from torchrec_aes.planning.plan import make_topology, plan_model, plan_summary

    schema = Schema(sparse=[SparseFeature(f"c{i}", n) for i, n in enumerate(CRITEO_1TB_ROWS)])
    arch = Architecture.from_dims(schema, criteo_dims(dims_kind))
    rss_before = _peak_rss_mib()
    t0 = time.perf_counter()
    topology = make_topology(world_size, "cuda", hbm_gb=hbm_gb, local_world_size=local_world_size)
    ebc = meta_ebc(arch.to_ebc_configs(), "rowwise_adagrad")
    plan = plan_model(ebc, arch, topology, batch_size)
    plan_s = time.perf_counter() - t0
    assert all(p.is_meta for p in ebc.parameters()), "a weight was materialised"
    t1 = time.perf_counter()
    rows = plan_summary(plan, arch, topology, batch_size=batch_size)
    summary_s = time.perf_counter() - t1
    (module_plan,) = plan.plan.values()
    kinds = Counter(f"{ps.sharding_type}/{ps.compute_kernel}" for ps in module_plan.values())  # type: ignore[attr-defined]
    return {
        "world_size": world_size,
        "plan_s": plan_s,
        "summary_s": summary_s,
        "rss_before_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
        "table_bytes": arch_bytes(arch),
        "max_rank_hbm": max(r.hbm_bytes for r in rows),
        "max_rank_ddr": max(r.ddr_bytes for r in rows),
        "kinds": dict(kinds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world-sizes", type=int, nargs="*", default=[8, 64, 512])
    parser.add_argument("--dims", choices=["power", "pattern", "supernet"], default="power")
    parser.add_argument(
        "--supernet-world-size", type=int, default=64, help="devices for the AdaS&S supernet (0 = skip)"
    )
    parser.add_argument("--hbm-gb", type=float, default=80.0)
    parser.add_argument("--local-world-size", type=int, default=8, help="GPUs per host")
    parser.add_argument("--batch-size", type=int, default=512, help="per-rank batch size")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one, args.dims, args.hbm_gb, args.local_world_size, args.batch_size)
        print(json.dumps(result))
        return

    if args.world_sizes:
        _report(args, args.dims, args.world_sizes)
    if args.supernet_world_size:
        print("\nAdaS&S supernet of Criteo-1TB (every table at the largest candidate)")
        _report(args, "supernet", [args.supernet_world_size])


def _plan_in_child(args: argparse.Namespace, dims: str, world_size: int) -> dict:
    lws = min(args.local_world_size, world_size)
    cmd = [sys.executable, __file__, "--one", str(world_size), "--dims", dims, "--hbm-gb", str(args.hbm_gb)]
    cmd += ["--local-world-size", str(lws), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _report(args: argparse.Namespace, dims: str, world_sizes: list[int]) -> None:
    from torchrec_aes.planning.memory import format_bytes

    print(f"dims ({dims}): {criteo_dims(dims)}")
    results = []
    for ws in world_sizes:
        results.append(_plan_in_child(args, dims, ws))
        r = results[-1]
        print(f"  planned {ws} devices in {r['plan_s']:.1f} s", flush=True)
    print(f"\ntables: {format_bytes(results[0]['table_bytes'])} (weights + row-wise Adagrad state), "
          f"{args.hbm_gb:g} GiB HBM per device, batch {args.batch_size} per rank")  # fmt: skip
    header = f"{'devices':>7} | {'plan s':>7} | {'summary s':>9} | {'RSS before':>10} | {'peak RSS':>9} | " \
             f"{'max HBM/rank':>12} | sharding/kernel"  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in results:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(r["kinds"].items()))
        print(
            f"{r['world_size']:>7} | {r['plan_s']:>7.1f} | {r['summary_s']:>9.2f} | "
            f"{r['rss_before_mib']:>7.0f} MiB | {r['peak_rss_mib']:>5.0f} MiB | "
            f"{format_bytes(r['max_rank_hbm']):>12} | {kinds}"
        )
    if len(results) > 1:
        base = results[0]
        ratios = ", ".join(f"{r['world_size']}: {r['plan_s'] / base['plan_s']:.1f}x" for r in results[1:])
        print(f"planning time relative to {base['world_size']} devices: {ratios}")


if __name__ == "__main__":
    main()
