"""Prediction jobs on 1 and N processes: images/s and the scaling ratio.

    python benchmarks/bench_predict_job.py RUN SOURCE [--procs 1 2] [--batch-size 8]

Runs `rcnnlab predict RUN SOURCE` as one process (torch's threads on every core), then under
`torchrun --nproc_per_node N` for each N (each process with cores / N threads, so every run
has the same cores), each into a fresh output folder. Prints, per run: the wall time of the
command (start-up and model loading included), the images/s of the job itself (from
predict_job.json: detection, reading and logging, without start-up), the ratio of that to one
process's, and how its files compare with one process's: pred.csv, and pred.json /
predictions.jsonl byte for byte. CPU kernels may round differently with another number of
threads, so each N is also compared with one process running cores / N threads (a further,
unmeasured run). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rcnnlab.runs.environment import machine_description

OUTPUTS = ("pred.json", "pred.csv", "predictions.jsonl")


def run_job(run: str, source: str, out: Path, procs: int, batch_size: int,
            cores: int) -> tuple[float, dict]:
    """Wall seconds of the command and its job record (`cores` threads in all)."""
    args = ["predict", run, source, "--out", str(out), "--device", "cpu", "--batch-size",
            str(batch_size)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
    if procs == 1:
        command = [sys.executable, "-m", "rcnnlab", *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        command = [torchrun, "--nproc_per_node", str(procs), "-m", "rcnnlab", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "predict_job.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("source", help="a folder, a glob, a .txt list or a COCO json")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{machine_description()}; {Path(args.run).name} on {args.source}, batch "
          f"{args.batch_size}, {cores} cores shared by the processes")
    print(f"{'processes':>9}{'images':>8}{'wall s':>9}{'job s':>8}{'job img/s':>11}"
          f"{'vs 1':>7}  files against 1 process")
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "p1"
        wall, job = run_job(args.run, args.source, one, 1, args.batch_size, cores)
        base = job["images_per_second_now"]
        print(f"{1:>9}{job['images']:>8}{wall:>9.1f}{job['seconds_now']:>8.1f}{base:>11.1f}"
              f"{1.0:>7.2f}  -")
        for procs in [p for p in args.procs if p != 1]:
            out = Path(tmp) / f"p{procs}"
            wall, job = run_job(args.run, args.source, out, procs, args.batch_size, cores)
            rate = job["images_per_second_now"]
            threads = max(1, cores // procs)
            same_threads = Path(tmp) / f"p1_t{threads}"
            run_job(args.run, args.source, same_threads, 1, args.batch_size, threads)
            print(f"{procs:>9}{job['images']:>8}{wall:>9.1f}{job['seconds_now']:>8.1f}"
                  f"{rate:>11.1f}{rate / base:>7.2f}  {compare(out, one)}; at {threads} "
                  f"thread(s) each: {compare(out, same_threads)}")


def compare(out: Path, reference: Path) -> str:
    """How `out`'s files compare with `reference`'s."""
    if all((out / f).read_bytes() == (reference / f).read_bytes() for f in OUTPUTS):
        return "identical"
    csv_same = (out / "pred.csv").read_bytes() == (reference / "pred.csv").read_bytes()
    a = json.loads((out / "pred.json").read_text())
    b = json.loads((reference / "pred.json").read_text())
    if len(a) != len(b):
        return f"pred.csv {'same' if csv_same else 'differs'}, {len(a)} vs {len(b)} detections"
    boxes = sum(x["bbox"] != y["bbox"] or x["category_id"] != y["category_id"]
                for x, y in zip(a, b, strict=True))
    scores = [abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)
              if x["score"] != y["score"]]
    return (f"pred.csv {'same' if csv_same else 'differs'}; of {len(a)} detections {boxes} "
            f"boxes and {len(scores)} scores differ (by at most {max(scores, default=0):.0e})")


if __name__ == "__main__":
    main()
