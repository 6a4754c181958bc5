"""TorchX components (launchers/components.py): a real `local_cwd` launch and slurm/kubernetes dry runs.

The dry runs render the exact request each scheduler would receive (the sbatch script, the Volcano job)
through `Runner.dryrun_component`, the call behind `torchx run --dryrun`, so no cluster is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torchx.runner import get_runner
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import get_component

from tests.conftest import REPO

COMPONENTS = REPO / "launchers" / "components.py"
TINY_SEARCH = "configs/tests/tiny.yaml"


def _component(name: str) -> str:
    return f"{COMPONENTS}:{name}"


def _dryrun(name: str, args: list[str], scheduler: str, cfg: dict | None = None):
    with get_runner() as runner:
        # workspace=None: use --image as is (the CLI's default workspace would build a docker image).
        return runner.dryrun_component(_component(name), args, scheduler, cfg=cfg or {}, workspace=None)


# ---------------------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------------------


def _entrypoint(name: str, args: list[str]) -> str:
    """The shell command each replica runs, from the component's args as `torchx run` passes them."""
    (role,) = materialize_appdef(get_component(_component(name)).fn, args).roles
    assert role.name == name
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return role.args[1]


@pytest.mark.parametrize("command", ["search", "train"])
def test_component_runs_the_cli_subcommand_with_config_and_overrides(command: str) -> None:
    cmd = _entrypoint(command, ["-j", "1x2", "--", TINY_SEARCH, "train.epochs=2", "--run_dir", "runs/x"])
    assert "torchrun " in cmd and "--nnodes 1 --nproc_per_node 2" in cmd
    # The run directory goes before the config: the CLI's positional overrides must be contiguous.
    assert cmd.endswith(f"-m torchrec_aes.cli {command} --run-dir runs/x {TINY_SEARCH} train.epochs=2")


def test_run_dir_can_be_given_before_or_after_the_double_dash() -> None:
    before = _entrypoint("search", ["--run_dir", "runs/x", "--", TINY_SEARCH])
    after = _entrypoint("search", ["--", TINY_SEARCH, "--run_dir=runs/x"])
    assert before.endswith(f"search --run-dir runs/x {TINY_SEARCH}")
    assert after.endswith(f"search --run-dir runs/x {TINY_SEARCH}")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "must be the config file"),
        (["--", "train.epochs=2"], "must be the config file"),
        (["--", TINY_SEARCH, "epochs"], "expected key=value overrides"),
        (["--", TINY_SEARCH, "--run_dir"], "--run_dir needs a directory"),
        (["--run_dir", "a", "--", TINY_SEARCH, "--run_dir", "b"], "two run directories"),
    ],
)
def test_bad_component_arguments_fail_before_anything_is_submitted(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _dryrun("search", args, "local_cwd")


def test_component_help_documents_every_argument() -> None:
    """`torchx run ... :search --help` is built from the docstring; TorchX needs one line per argument."""
    from torchx.specs.file_linter import get_fn_docstring, validate

    assert validate(str(COMPONENTS), "search") == [] and validate(str(COMPONENTS), "train") == []
    for name in ("search", "train"):
        _, args_desc = get_fn_docstring(get_component(_component(name)).fn)
        assert all(desc and not desc.startswith(" ") for desc in args_desc.values())
        assert "config file" in args_desc["args"]


# ---------------------------------------------------------------------------------------------------------
# Cluster schedulers, rendered without a cluster
# ---------------------------------------------------------------------------------------------------------


def test_slurm_dryrun_requests_two_nodes_of_eight_gpus_running_the_search() -> None:
    info = _dryrun("search", ["-j", "2x8", "--gpu", "8", "--", "configs/quickstart.yaml"], "slurm")
    replicas = info.request.replicas
    assert len(replicas) == 2  # one heterogeneous-job group per node
    for replica in replicas.values():
        assert replica.sbatch_opts["gpus-per-task"] == "8"
        command = replica.args[-1]
        assert "--nnodes 2 --nproc_per_node 8" in command
        assert command.endswith("-m torchrec_aes.cli search configs/quickstart.yaml")
    script = info.request.materialize()
    assert "#SBATCH hetjob" in script and script.count("torchrec_aes.cli search configs/quickstart.yaml") == 2


def test_kubernetes_dryrun_renders_a_volcano_job_with_the_image_and_gpus() -> None:
    pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the `kubernetes` package")
    args = ["-j", "2x8", "--image", "registry.example/torchrec-aes:1", "--gpu", "8", "--",
            "configs/quickstart.yaml", "search.budget=0.1 x uniform-64"]  # fmt: skip
    info = _dryrun("search", args, "kubernetes", cfg={"queue": "default"})
    job = yaml.safe_load(str(info))  # the manifest `kubectl` would receive
    assert job["kind"] == "Job" and job["spec"]["queue"] == "default"
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2
    for task in tasks:
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "registry.example/torchrec-aes:1"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["command"][:2] == ["bash", "-c"]
        assert container["command"][2].endswith(
            "-m torchrec_aes.cli search configs/quickstart.yaml 'search.budget=0.1 x uniform-64'"
        )


# ---------------------------------------------------------------------------------------------------------
# A real launch: 2 CPU processes (gloo) through the torchx CLI
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_torchx_local_cwd_search_on_two_processes_writes_the_run_directory(tmp_path: Path) -> None:
    """The README command, with the venv's bin directory deliberately off PATH (as with `.venv/bin/torchx`
    from a shell that did not activate it): the component must still find torchrun."""
    torchx = Path(sys.executable).parent / "torchx"
    run_dir = tmp_path / "run"
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    cmd = [
        str(torchx), "run", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'torchx_logs'}",
        "launchers/components.py:search", "-j", "1x2",
        "--", TINY_SEARCH, "--run_dir", str(run_dir), f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Job finished: SUCCEEDED" in output
    for name in ("config.yaml", "architecture.yaml", "metrics.json", "plan.json", "report.md"):
        assert (run_dir / name).is_file(), f"{name} missing; torchx output:\n{output[-4000:]}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    assert metrics["embedding_bytes"] <= metrics["budget_bytes"]
    arch = yaml.safe_load((run_dir / "architecture.yaml").read_text())
    assert arch["method"] == "power_rule" and len(arch["tables"]) == 6
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["metadata"]["topology"]["world_size"] == 2
