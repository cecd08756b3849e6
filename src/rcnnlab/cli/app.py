"""The `rcnnlab` app and its `data` group, the version flag and `rcnnlab configs`; the
commands register on them from the modules beside this one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from rcnnlab.cli.common import console

app = typer.Typer(
    help="Train, tune, evaluate and predict with Faster R-CNN detectors on COCO-format data.\n\n"
    "Start with `rcnnlab demo` (generated house numbers, about 3 minutes on a 2-core CPU).",
    no_args_is_help=True, rich_markup_mode="markdown", pretty_exceptions_enable=False)
data_app = typer.Typer(help="Make and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from rcnnlab.version import __version__

        print(f"rcnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
        = False) -> None:
    """Train, tune, evaluate and predict with Faster R-CNN detectors on COCO-format data."""


@app.command("configs")
def configs_command() -> None:
    """List the built-in recipes that -c NAME finds (a path to a YAML file works too)."""
    from rcnnlab.config import builtin_configs

    table = Table(title="built-in configs (-c NAME)")
    table.add_column("name")
    table.add_column("what it is")
    folder = None
    for name, (path, description) in builtin_configs().items():
        table.add_row(name, description)
        folder = path.parent
    console.print(table)
    console.print(f"in {folder}")
