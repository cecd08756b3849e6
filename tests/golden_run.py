"""The fixed-seed reference run that an engine change must reproduce bit for bit.

Two epochs of two iterations on generated house numbers with multi-scale training, repeat-factor
sampling, the policy-gradient objective and RLO scale weighting all on (every source of random
draws and of training-time state), as the resume test runs them. `tests/data/golden_run.json`
holds what the engine produced before it was restructured: a SHA-256 of the final weights and
metrics.csv without its timing columns, one record per machine it was recorded on (CPUs round
differently, and after a few policy-gradient steps a rounding difference moves a discrete AP).
Add this machine's record, from a commit whose results are the reference, with
``python tests/golden_run.py --record``; it replaces an earlier record of the same machine.

Since it was recorded, metrics.csv logs each loss under one name: `loss_classifier` and
`loss_box_reg` are logged as `loss_cls` and `loss_bbox` only (`ONE_NAME`); the comparison drops
them from the recorded rows after checking that they equal the names that stand for them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import platform
import tempfile
from pathlib import Path
from unittest import mock

import matplotlib
import torch

GOLDEN = Path(__file__).parent / "data" / "golden_run.json"
# metrics.csv columns that measure time or memory, not the run
TIMING = frozenset({"epoch_seconds", "train_img_per_s", "peak_memory_mb", "val_seconds"})
# columns recorded under two names, now logged under the second only
ONE_NAME = {"loss_classifier": "loss_cls", "loss_box_reg": "loss_bbox"}
# A frozen copy of the suite's tiny setting (tests/tiny.py TINY) plus the resume
# test's methods: the reference run must not change when the suite's setting does.
SETTING = [
    "model.arch=resnet18_fpn", "model.native_size=true", "model.min_size=64",
    "model.max_size=256", "model.rpn_pre_nms_top_n_train=200",
    "model.rpn_post_nms_top_n_train=100", "model.rpn_pre_nms_top_n_test=100",
    "model.rpn_post_nms_top_n_test=50", "model.box_batch_size_per_image=32",
    "model.rpn_batch_size_per_image=64", "train.batch_size=2", "train.warmup_iters=2",
    "train.threads=2", "eval.batch_size=4", "train.record=false",
    "train.epochs=2", "train.iters_per_epoch=2", "augment.no_aug_epochs=0",
    "augment.multiscale_sizes=[48,96]", "data.repeat_factor_threshold=0.5",
    "train.roi_loss=policy_gradient", "train.scale_weighting=rlo", "train.scale_interval=1",
]


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def machine() -> dict[str, str]:
    """What decides the floating-point results: CPU, its vector ISA in torch, torch itself."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


@contextlib.contextmanager
def recorded_fonts():
    """The generator draws with the fonts the run was recorded with: DejaVu (the system's and
    matplotlib's) and matplotlib's own. Any other font on the machine (installing Chromium
    brings Liberation) would change the generated images, and so every number of the run."""
    from rcnnlab.data import synth

    every = synth._font_files
    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

    def caches() -> None:
        for cached in (synth._fonts, synth._weighted_glyph, synth._font_extent):
            cached.cache_clear()

    caches()
    try:
        with mock.patch.object(synth, "_font_files", lambda: [
                p for p in every() if p.name.startswith("DejaVu") or p.parent == bundled]):
            yield
    finally:
        caches()


def run_golden(root: Path) -> dict:
    """Generate the data, train the reference run under `root`; its digest and metrics rows."""
    from rcnnlab import api
    from rcnnlab.config import load_config
    from rcnnlab.data.synth import generate_dataset
    from rcnnlab.engine.progress import ProgressReporter
    from rcnnlab.runs.checkpoint import load_checkpoint

    data_dir = root / "synth"
    with recorded_fonts():
        generate_dataset(data_dir, n_train=8, n_valid=4, n_test=4, seed=3)
    data = [f"data.{s}_json={data_dir / s / 'annotations.json'}" for s in ("train", "valid",
                                                                          "test")]
    cfg = load_config(None, [*SETTING, *data, f"out_dir={root / 'runs'}", "name=golden"])
    api.train(cfg, reporter=ProgressReporter(quiet=True))
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["model"]
    with (cfg.run_dir / "metrics.csv").open(newline="") as fh:
        rows = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]
    return {"weights_sha256": weights_digest(state), "metrics": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true",
                        help=f"add this machine's record to {GOLDEN}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": machine(), **run_golden(Path(tmp))}
    print(json.dumps(result, indent=1))
    if args.record:
        records = [r for r in json.loads(GOLDEN.read_text())["records"]
                   if r["machine"] != result["machine"]]
        GOLDEN.write_text(json.dumps({"records": [*records, result]}, indent=1) + "\n")
        print(f"written: {GOLDEN}")


if __name__ == "__main__":
    main()
