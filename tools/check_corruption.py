"""Corrupt saved state: each case damages one file a finished search left (truncated to half, one byte
flipped, emptied), reruns the search on its run directory and classifies what happened:

- `recovered`: exit 0, a log line names the damage, and the result equals the undamaged run's;
- `refused`: exit 2 with one error line (nothing intact to fall back on);
- `unused`: exit 0 without a word, the same result: the file was not needed (a finished phase's result is
  kept elsewhere);
- `silent`: exit 0 without a word and another result (a wrong result would go unnoticed);
- `crash`: a traceback or another exit status.

    .venv/bin/python tools/check_corruption.py [--out /tmp/corrupt] [--configs adass_tiny ihas_tiny bet_tiny]

Prints one row per case and the counts per class.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from harness import run_cli, write_interactions

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "torchrec-aes"
TESTS = REPO / "configs" / "tests"
WORDS = ("damaged", "corrupt", "checksum", "unreadable", "fell back", "falling back", "recomputed", "rebuilt")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        raw = bytearray(data)
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(b"")


def outcome(run_dir: Path) -> tuple:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics["test"]["auc"] if "auc" in metrics["test"] else json.dumps(metrics["test"]), metrics.get(
        "dims"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="work directory (default: a temporary one, removed)")
    parser.add_argument("--configs", nargs="+", default=["adass_tiny", "ihas_tiny", "bet_tiny"])
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="corrupt_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for config in args.configs:
            common = [f"data.cache_dir={work / 'cache'}", "train.progress=false", "train.checkpoint=true"]
            if config == "bet_tiny":
                write_interactions(work / "interactions.txt")
                common.append(f"data.path={work / 'interactions.txt'}")
            clean = work / config / "clean"
            base = [str(BIN), "search", str(TESTS / f"{config}.yaml"), *common]
            done = run_cli([*base, "--run-dir", str(clean)])
            if done.returncode != 0:
                rows.append((config, "(first run)", "-", "crash", done.stderr.strip().splitlines()[-1:]))
                continue
            expected = outcome(clean)
            # One file of each kind the run saved: search states and their manifests, every phase's
            # checkpoint files (weights, manifest, generators).
            files = sorted(
                p.relative_to(clean) for p in clean.rglob("*") if p.is_file() and _saved_state(p, clean)
            )
            kinds: dict[str, Path] = {}
            for f in files:
                kinds.setdefault(_kind(f), f)
            for rel in kinds.values():
                for how in ("truncate", "flip", "empty"):
                    case = work / config / f"{str(rel).replace('/', '_')}_{how}"
                    shutil.copytree(clean, case)
                    damage(case / rel, how)
                    again = run_cli([*base, "--run-dir", str(case)])
                    text = again.stderr
                    errors = [line for line in text.splitlines() if "error:" in line]
                    if "Traceback" in text or again.returncode not in (0, 2):
                        verdict, note = "crash", text.strip().splitlines()[-1:]
                    elif again.returncode == 2:
                        verdict, note = ("refused" if len(errors) == 1 else "crash"), errors[:1]
                    else:
                        said = [line for line in text.splitlines() if any(w in line.lower() for w in WORDS)]
                        same = outcome(case) == expected
                        if said:
                            verdict = "recovered" if same else "recovered*"
                        else:  # nothing said: harmless only if the file was not needed
                            verdict = "unused" if same else "silent"
                        note = said[:1] if said else ["(nothing said)"]
                    rows.append((config, str(rel), how, verdict, note))
                    shutil.rmtree(case, ignore_errors=True)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print("| config | file | damage | outcome | what it said |")
    print("|---|---|---|---|---|")
    for config, rel, how, verdict, note in rows:
        print(f"| {config} | {rel} | {how} | {verdict} | {' '.join(note)[:150]} |")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[3]] = counts.get(row[3], 0) + 1
    print("counts:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), f"(of {len(rows)})")
    print("recovered* = recovered with a note but a different result than the undamaged run")


def _saved_state(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return rel.parts[0] in ("checkpoints", "bet") or rel.name in ("nasrec_scores.json",)


def _kind(rel: Path) -> str:
    """Files of one kind: the same name in the same phase (epochs and finalists folded)."""
    parts = [p for p in rel.parts if not p.startswith("epoch_")]
    if "finalists" in parts:
        parts = ["finalists", parts[-1]]
    return "/".join(parts)


if __name__ == "__main__":
    main()
