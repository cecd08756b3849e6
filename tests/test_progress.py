"""Progress bars: every detection pass (validation, evaluate, tune, predict) shows one on a
terminal, and nothing is drawn when the output is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from rcnnlab import cli
from tests.tiny import TINY


def _terminal(monkeypatch) -> io.StringIO:
    """Make the CLI's stderr console a terminal writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=buffer, force_terminal=True,
                                                    width=120))
    return buffer


def test_each_detection_pass_shows_a_bar_on_a_terminal(synth_dir, tmp_path, monkeypatch):
    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in
            ("train", "valid", "test")]
    buffer = _terminal(monkeypatch)
    train = CliRunner().invoke(cli.app, ["train", *TINY, *data, f"out_dir={tmp_path}",
                                         "name=p", "train.epochs=1", "train.iters_per_epoch=1"])
    assert train.exit_code == 0, train.output
    # training's bar closes after the epoch's last step, so validation can show its own
    assert "validating" in buffer.getvalue()
    for command, label in ((["evaluate", "--split", "test"], "detecting test"),
                           (["tune"], "sweeping thresholds"),
                           (["predict", str(synth_dir / "test"), "--out", str(tmp_path / "o")],
                            "predicting")):
        buffer.truncate(0)
        result = CliRunner().invoke(cli.app, [command[0], str(tmp_path / "p"), *command[1:],
                                              "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert label in buffer.getvalue(), (command, buffer.getvalue()[-500:])
        assert "ETA" in buffer.getvalue()


def test_no_bar_when_not_a_terminal(synth_dir, tmp_path, monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=buffer, force_terminal=False))
    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in
            ("train", "valid", "test")]
    result = CliRunner().invoke(cli.app, ["train", *TINY, *data, f"out_dir={tmp_path}",
                                          "name=q", "train.epochs=1", "train.iters_per_epoch=1"])
    assert result.exit_code == 0, result.output
    assert "validating" not in buffer.getvalue() and "ETA" not in buffer.getvalue()
