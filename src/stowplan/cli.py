"""The ``stowplan`` command line: a thin, lazily loaded dispatcher.

Each subcommand lives in its own module under :mod:`stowplan.commands` and exposes a click
command named ``command``. Modules are imported only when their subcommand runs, so
``stowplan --help`` stays fast and a heavy dependency (ONNX Runtime, OR-Tools, kopf) is loaded
only by the subcommand that needs it. This module must not import anything heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> (module under stowplan.commands, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "Serve InferenceModel YAML files on this machine (standalone mode)."),
    "place": ("place", "Solve a placement instance (JSON) and print the plan."),
    "memsim": ("memsim", "Replay allocation traces through the allocators and compare them."),
    "profile": ("profile_model", "Measure an ONNX model's latency and memory profile here."),
    "memprobe": ("memprobe", "The agent's memory books vs measured memory, example models."),
    "models": ("models", "Build the example ONNX models the project ships as recipes."),
    "crds": ("crds", "Generate the CRD YAML under crds/ from the API types."),
    "controlplane": ("controlplane", "Run a local kube-apiserver + etcd for trying stowplan out."),
    "cluster": ("cluster", "Run a real single-node Kubernetes cluster with stowplan's images."),
}

BENCHMARKS: dict[str, tuple[str, str]] = {
    "placement": ("bench_placement", "SLO-aware packing: GPUs used vs bounds vs best-fit."),
    "fgd": ("bench_fgd", "The public GPU-sharing benchmark (Alibaba trace, FGD protocol)."),
    "batching": ("bench_batching", "Batching policies vs load on a simulated device."),
    "http": ("bench_http", "Open-loop load against the agent serving a real ONNX model."),
    "dataplane": (
        "bench_dataplane",
        "Direct ONNX Runtime vs the agent's data paths, side by side.",
    ),
    "timeslice": ("bench_timeslice", "Time-sliced executor vs per-model threads."),
    "operator": ("bench_operator", "The operator at fleet scale on a real local control plane."),
    "soak": ("bench_soak", "Mixed load with CPUs contended, then a lone client on every model."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module_name, _ = self._lazy[cmd_name]
            module = importlib.import_module(f"stowplan.commands.{module_name}")
            command: click.Command = module.command
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in sorted(self._lazy.items())]
        rows += [
            (name, cmd.get_short_help_str())
            for name, cmd in sorted(self.commands.items())
            if name not in self._lazy
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(package_name="stowplan")
def main() -> None:
    """stowplan: pack many inference models onto a fleet of GPUs within their latency SLOs."""


@main.group(cls=LazyGroup, lazy=BENCHMARKS)
def bench() -> None:
    """Benchmarks; each prints the table that the README quotes."""
