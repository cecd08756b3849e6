"""The `rcnnlab` command line: data, plan, train, tune, evaluate, predict, export, serve, report,
diagnose, compare, demo: one typer app over `rcnnlab.api` and `rcnnlab.Detector`.

Every command takes an optional YAML config and dotted overrides (`train.epochs=3`). Errors in
the user's input end in one red line naming the file, the record and the fix (exit code 2).
"""

from rcnnlab.cli.app import app

# isort: off
# each module registers its commands on `app`; `rcnnlab --help` lists them in this order
from rcnnlab.cli import training, deploy, records, data  # noqa: E402, F401
# isort: on

__all__ = ["app"]

if __name__ == "__main__":
    app()
