"""The capability registry: a package outside the engine adds a command, a bench suite and a
training task through its entry point, without editing any file of the engine; conflicts and
malformed declarations are one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from deepultrasound.capabilities import ENTRY_POINT_GROUP, capabilities, collect
from deepultrasound.errors import ConfigError

TOY_FILES = {
    "toy_capability/__init__.py": '"""A capability installed beside the engine."""\n',
    "toy_capability/capability.py": """
        COMMANDS = {"toy-greet": ("toy_capability.greet", "print a greeting")}
        BENCH_SUITES = {"toy-sum": "toy_capability.bench"}
        TASKS = {"toy-scale": "toy_capability.task"}
    """,
    "toy_capability/greet.py": """
        def configure(parser):
            parser.add_argument("--name", default="world")

        def run(args):
            print(f"hello {args.name}")
            return 0
    """,
    "toy_capability/bench.py": """
        HELP = "sum of the first n integers"

        def configure(parser):
            parser.add_argument("--n", type=int, default=4)

        def run(args):
            print("summing ...")
            return {"n": args.n, "sum": sum(range(1, args.n + 1))}
    """,
    "toy_capability/task.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.utils.data import TensorDataset

        from deepultrasound.runtime import register_architecture
        from deepultrasound.training import ExportSpec, Task, register_task

        register_architecture("toy.linear")(nn.Linear)


        @register_task
        class ScaleTask(Task):
            \"\"\"Learn y = 3 x with one linear layer.\"\"\"

            name = "toy-scale"

            def build_networks(self):
                return {"line": nn.Linear(1, 1)}

            def build_datasets(self, args):
                x = torch.linspace(-1, 1, 16).unsqueeze(1)
                return TensorDataset(x, 3 * x), TensorDataset(x, 3 * x)

            def training_step(self, batch, ctx):
                x, y = batch
                loss = F.mse_loss(ctx.networks["line"](x), y)
                ctx.optimize(loss)
                return {"mse": loss}

            def validation_step(self, batch, networks):
                x, y = batch
                return {"abs_error": (networks["line"](x) - y).abs().squeeze(1)}

            def export_spec(self):
                return ExportSpec(
                    network="line",
                    architecture="toy.linear",
                    architecture_module="deepultrasound.runtime.architectures",
                    architecture_args={"in_features": 1, "out_features": 1},
                    example_inputs=(torch.zeros(1, 1),),
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_spatial=False,
                )
    """,
    "toy_capability-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: toy_capability\nVersion: 0.1\n",
    "toy_capability-0.1.dist-info/entry_points.txt": f"[{ENTRY_POINT_GROUP}]\ntoy = toy_capability.capability\n",
}


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory) -> Path:
    """A folder holding the toy capability package and its distribution metadata (as pip installs it)."""
    root = tmp_path_factory.mktemp("site")
    for name, text in TOY_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def run_engine(toy_path: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "deepultrasound", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=cwd,
    )


def test_toy_command_runs_and_is_listed(toy_path):
    done = run_engine(toy_path, "toy-greet", "--name", "probe")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello probe\n"
    listing = run_engine(toy_path, "--help")
    assert "toy-greet" in listing.stdout and "print a greeting" in listing.stdout


def test_toy_bench_suite_prints_json_last(toy_path):
    done = run_engine(toy_path, "bench", "toy-sum", "--n", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "summing ..."
    assert json.loads(lines[-1]) == {"suite": "toy-sum", "n": 10, "sum": 55}


def test_toy_task_trains_with_the_train_command(toy_path, tmp_path):
    config = {
        "task": "toy-scale",
        "batch_size": 16,
        "stages": [{"epochs": 1}],
        "optimizers": {"main": {"name": "sgd", "lr": 0.1}},
        "output_dir": str(tmp_path / "run"),
        "bundle": {"formats": []},  # weights only: export is not under test here
    }
    (tmp_path / "toy.json").write_text(json.dumps(config))
    done = run_engine(toy_path, "train", str(tmp_path / "toy.json"), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and {"train/mse", "val/abs_error"} <= summary.keys()
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["task"] == "toy-scale"


def test_without_the_toy_nothing_is_registered():
    found = capabilities()
    assert "toy-greet" not in found.commands and "toy-sum" not in found.bench_suites
    assert found.commands["strain"].provider == "deepultrasound.elastography.capability"
    assert found.tasks["deepuse"].module == "deepultrasound.elastography.training_task"


def capability_module(name: str, **declared: object) -> tuple[str, ModuleType]:
    module = ModuleType(name)
    for attribute, value in declared.items():
        setattr(module, attribute, value)
    return name, module


def test_a_name_declared_twice_names_both_providers():
    first = capability_module("one.capability", BENCH_SUITES={"speed": "one.bench"})
    second = capability_module("two.capability", BENCH_SUITES={"speed": "two.bench"})
    with pytest.raises(ConfigError, match=r"bench suite 'speed' is declared twice: by one\.capability and by two"):
        collect(iter([first, second]))


def test_kinds_have_separate_names():
    both = capability_module("one.capability", COMMANDS={"strain": ("one.cmd", "help")}, BENCH_SUITES={"strain": "b"})
    found = collect(iter([both]))
    assert found.commands["strain"].module == "one.cmd" and found.bench_suites["strain"].module == "b"


@pytest.mark.parametrize(
    "declared, message",
    [
        (
            {"COMMANDS": {"go": "one.go"}},
            r"COMMANDS\['go'\] of the capability module one.capability must be a \(module",
        ),
        ({"TASKS": {"fit": 3}}, r"TASKS\['fit'\] .* must be a module name, got 3"),
        ({"BENCH_SUITES": ["one.bench"]}, r"BENCH_SUITES of the capability module one.capability must be a dict"),
    ],
)
def test_malformed_declarations_are_refused(declared, message):
    with pytest.raises(ConfigError, match=message):
        collect(iter([capability_module("one.capability", **declared)]))


def test_conflict_is_one_line_from_the_command_line(toy_path, tmp_path):
    clash = tmp_path / "clash"
    (clash / "clash_capability").mkdir(parents=True)
    (clash / "clash_capability" / "__init__.py").write_text("")
    (clash / "clash_capability" / "capability.py").write_text('COMMANDS = {"train": ("clash_capability.x", "x")}\n')
    (clash / "clash-0.1.dist-info").mkdir()
    (clash / "clash-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: clash\nVersion: 0.1\n")
    (clash / "clash-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nclash = clash_capability.capability\n"
    )
    done = run_engine(clash, "--help")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "deepultrasound: error: the command 'train' is declared twice: by deepultrasound.training.capability "
        "and by clash_capability.capability (entry point 'clash' of clash); uninstall one of them"
    ]
