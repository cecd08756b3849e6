"""Prediction jobs: the log of finished images, a list of paths as the source, unreadable
images, a job killed and resumed, and a job shared over two processes (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcnnlab import api
from rcnnlab.errors import MissingFileError, RunError
from rcnnlab.jobs.log import ResultsLog
from rcnnlab.reporting.predictions import stream_predictions, write_predictions
from rcnnlab.runs.rundir import RunDir

OUTPUTS = ("pred.json", "pred.csv", "predictions.jsonl")


def _record(index: int) -> dict:
    return {"index": index, "image_id": index + 1, "file": f"{index}.png", "number": "7",
            "detections": [{"image_id": index + 1, "category_id": 7,
                            "bbox": [1.5, 2.25, 3.0, 4.0], "score": 0.9}]}


# ------------------------------------------------------------------------------ the log
def test_the_log_drops_a_last_line_a_kill_cut_short(tmp_path):
    log = ResultsLog(tmp_path)
    log.append([_record(0), _record(1)])
    log.close()
    whole = log.path.read_bytes()
    with log.path.open("ab") as f:
        f.write(b'{"index": 2, "image_id": 3, "file": "2.p')
    assert log.count() == 2
    assert log.recover() == {0, 1}
    assert log.path.read_bytes() == whole  # cut back to the complete lines
    assert [r["index"] for r in log.records()] == [0, 1] and log.ascending()


def test_the_log_refuses_a_line_it_did_not_write(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"index": 0}\n["not", "a", "record"]\n')
    with pytest.raises(RunError, match=r"predictions.jsonl, line 2: not a line rcnnlab"):
        ResultsLog(tmp_path).recover()


def test_streamed_prediction_files_equal_the_written_ones(tmp_path):
    records = [_record(i) for i in range(3)]
    records[1]["detections"] = []
    records[1]["number"] = "-1"
    detections = [d for r in records for d in r["detections"]]
    written = write_predictions(tmp_path / "a", detections, [1, 2, 3], {7: "7"}, 0.5)
    (tmp_path / "b").mkdir()
    streamed = stream_predictions(
        tmp_path / "b", ((r["image_id"], r["detections"], r["number"]) for r in records),
        digits=True)
    for kind in ("json", "csv"):
        assert streamed[kind].read_bytes() == written[kind].read_bytes(), kind


# ------------------------------------------------------------------------------ jobs
def _numbered_folder(tiny_run: Path, folder: Path, n: int) -> Path:
    """`n` images named 1.jpg .. n.jpg (the tiny run's test images over and over)."""
    folder.mkdir()
    sources = sorted(_test_images(tiny_run))
    for i in range(n):
        os.symlink(sources[i % len(sources)], folder / f"{i + 1}.jpg")
    return folder


def _test_images(tiny_run: Path) -> list[Path]:
    """The test images of the tiny run's generated set."""
    cfg = RunDir(tiny_run).read_config()
    return sorted(Path(cfg.data.test_json).parent.glob("*.jpg"))


def test_a_list_of_paths_with_an_unreadable_image(tiny_run, tmp_path, caplog):
    images = _test_images(tiny_run)[:2]
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in images:
        shutil.copy(image, photos / f"house_{image.name}")
    (photos / "broken.png").write_bytes(b"not a png")
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"# tonight's images\n../photos/house_{images[0].name}\n\n"
                       f"../photos/broken.png\n{photos / f'house_{images[1].name}'}\n")
    paths = api.predict(tiny_run, listing, tmp_path / "out", device="cpu", threshold=0.3)
    # relative to the list's folder; ids 1..3 in list order, written as listed
    assert paths["ids"].read_text().splitlines() == [
        "image_id,file_name", f"1,../photos/house_{images[0].name}", "2,../photos/broken.png",
        f"3,{photos / f'house_{images[1].name}'}"]
    assert [line.split(",")[0] for line in paths["csv"].read_text().splitlines()] == [
        "image_id", "1", "3"]
    unreadable = paths["unreadable"].read_text().splitlines()
    assert unreadable[0] == "image_id,file_name,error" and len(unreadable) == 2
    assert unreadable[1].startswith("2,../photos/broken.png,") and "broken.png" in unreadable[1]
    assert "1 of 3 images could not be read" in caplog.text
    logged = [json.loads(line) for line in paths["log"].read_text().splitlines()]
    assert [r["index"] for r in logged] == [0, 1, 2] and "error" in logged[1]
    assert logged[0]["number"] == Path(paths["csv"]).read_text().splitlines()[1].split(",")[1]
    job = json.loads(paths["job"].read_text())
    assert job["finished"] and job["unreadable"] == 1 and job["images"] == 3


def test_a_list_naming_no_image_file(tiny_run, tmp_path):
    listing = tmp_path / "todo.txt"
    listing.write_text("a.jpg\nnotes.docx\n")
    with pytest.raises(MissingFileError, match=r"todo.txt, line 2: 'notes.docx' is not an"):
        api.predict(tiny_run, listing, tmp_path / "out", device="cpu")


def _predict_command(run: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rcnnlab", "predict", str(run), str(source), "--out",
            str(out), "--device", "cpu", "--batch-size", "2", *extra]


def test_a_killed_job_resumes_to_the_uninterrupted_output(tiny_run, tmp_path):
    folder = _numbered_folder(tiny_run, tmp_path / "many", 240)
    whole = api.predict(tiny_run, folder, tmp_path / "whole", batch_size=2, device="cpu")
    out = tmp_path / "killed"
    # the folder holds an earlier job's result (ids enumerated: image_ids.csv)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("b.jpg", "a.jpg"):
        shutil.copy(_test_images(tiny_run)[0], earlier / name)
    before = api.predict(tiny_run, earlier, out, device="cpu", save_images=True)
    old = {name: (out / name).read_bytes() for name in ("pred.json", "pred.csv",
                                                         "image_ids.csv")}
    job = subprocess.Popen(_predict_command(tiny_run, folder, out), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = ResultsLog(out)
    deadline = time.monotonic() + 120
    while log.count() < 9 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = log.count()
    assert 9 <= done < 240, f"the job was not stopped midway ({done} images logged)"
    # until the new job finishes, the earlier job's files stay as they were, all of them
    assert {name: (out / name).read_bytes() for name in old} == old
    assert not list(out.rglob("*.tmp")) and before["images"].is_dir()
    with log.path.open("ab") as f:  # as if the kill had cut a line short
        f.write(b'{"index": 9999, "image_id"')

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(_predict_command(tiny_run, folder, out, *extra),
                              capture_output=True, text=True, timeout=300)

    refused = cli()
    assert refused.returncode == 2 and "of 240 images done" in refused.stderr
    assert "Fix: add --resume" in refused.stderr
    changed = cli("--resume", "--threshold", "0.9")
    assert changed.returncode == 2 and "threshold 0.5, now 0.9" in changed.stderr
    resumed = cli("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming the job in {out}: {done} of 240 images done" in resumed.stderr
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (whole["json"].parent / name).read_bytes(), name
    record = json.loads((out / "predict_job.json").read_text())
    assert record["finished"] and record["detected_now"] == 240 - done
    assert not (out / "image_ids.csv").exists()  # numeric names: no mapping, none left over
    # resuming a finished job detects nothing and writes the same files
    again = cli("--resume")
    assert again.returncode == 0 and json.loads(
        (out / "predict_job.json").read_text())["detected_now"] == 0
    assert (out / "pred.json").read_bytes() == whole["json"].read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this python")
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
               "rcnnlab", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_predict_what_one_does(tiny_run, tmp_path):
    folder = _numbered_folder(tiny_run, tmp_path / "imgs", 11)  # 6 batches: 3 rounds
    one = api.predict(tiny_run, folder, tmp_path / "one", batch_size=2, device="cpu")
    two = _torchrun("predict", str(tiny_run), str(folder), "--out", str(tmp_path / "two"),
                    "--device", "cpu", "--batch-size", "2")
    assert "data-parallel prediction: 2 processes (gloo)" in two.stdout + two.stderr
    for name in OUTPUTS:
        assert (tmp_path / "two" / name).read_bytes() == (
            one["json"].parent / name).read_bytes(), name
    assert json.loads((tmp_path / "two" / "predict_job.json").read_text())["processes"] == 2


def test_two_processes_evaluate_what_one_does(tiny_run, tmp_path):
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "config.yaml", copy)
    shutil.copy(tiny_run / "checkpoints" / "best.pt", copy / "checkpoints")
    one = api.evaluate(copy / "checkpoints" / "best.pt", device="cpu",
                       overrides=["eval.batch_size=1"], save=False)
    _torchrun("evaluate", str(copy), "--device", "cpu", "eval.batch_size=1")
    two = json.loads((copy / "eval_test.json").read_text())
    assert two == json.loads(json.dumps(one.as_dict()))
    assert two["n_images"] == 4 and two["AP50"] is not None
