"""`python -m rcnnlab`, as `torchrun ... -m rcnnlab train` starts it: the command line."""

from rcnnlab.cli import app

app(prog_name="rcnnlab")
