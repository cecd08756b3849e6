"""Progress bars: every detection pass (validation, evaluate, tune, predict) and dataset
conversion shows one on a terminal, and nothing is drawn when the output is not a terminal."""

from __future__ import annotations

import contextlib
import io

from rich.console import Console
from typer.testing import CliRunner

from rcnnlab import cli
from rcnnlab.cli import common as cli_common
from rcnnlab.progress import PROGRESS, tracked
from tests.conftest import shared_path
from tests.tiny import TINY


def _terminal(monkeypatch) -> io.StringIO:
    """Make the CLI's stderr console a terminal writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(cli_common, "err_console", Console(file=buffer, force_terminal=True,
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
    monkeypatch.setattr(cli_common, "err_console", Console(file=buffer, force_terminal=False))
    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in
            ("train", "valid", "test")]
    result = CliRunner().invoke(cli.app, ["train", *TINY, *data, f"out_dir={tmp_path}",
                                          "name=q", "train.epochs=1", "train.iters_per_epoch=1"])
    assert result.exit_code == 0, result.output
    assert "validating" not in buffer.getvalue() and "ETA" not in buffer.getvalue()


def test_data_convert_shows_a_bar_per_file_read(tmp_path, monkeypatch):
    buffer = _terminal(monkeypatch)
    svhn = shared_path("svhn-sample", "train", "digitStruct.mat")
    result = CliRunner().invoke(cli.app, ["data", "convert", str(svhn), "--from", "svhn",
                                          "--out", str(tmp_path / "svhn.json")])
    assert result.exit_code == 0, result.output
    assert "reading digitStruct.mat's names" in buffer.getvalue()
    assert "reading digitStruct.mat's boxes" in buffer.getvalue()


def test_tracked_advances_once_per_item(monkeypatch):
    steps: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def factory(description, total):
        yield lambda n=1: steps.append((description, total, n))

    token = PROGRESS.set(factory)
    try:
        assert list(tracked(iter("abc"), "letters", total=3)) == ["a", "b", "c"]
        assert list(tracked([1, 2], "numbers")) == [1, 2]
    finally:
        PROGRESS.reset(token)
    assert steps == [("letters", 3, 1)] * 3 + [("numbers", 2, 1)] * 2
    assert list(tracked([1], "quiet")) == [1]  # no factory: no bar, same items
