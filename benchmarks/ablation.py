"""Ablations at an equal training budget: each variant trained over the same seeds, then tuned and
scored on the same held-out split; prints mean +- std of mAP, AP50, AP75 and sequence accuracy.

Every variant is the base config plus a few overrides, trained for the same number of epochs
(so the same iterations and images), from the same seeds. A finished run leaves `result.json`
in its folder and is skipped when the script is run again, so an interrupted study continues
where it stopped and more seeds can be added later.

    python benchmarks/ablation.py --study augment --seeds 0 1 --epochs 3
    python benchmarks/ablation.py --study augment --only none all --seeds 0 1 2

Studies:
    augment   no augmentation, each augmentation group alone, all of them, and all of them
              with auto-fitted anchors (issue 3).

The table is printed and written to `<out>/<study>.md`, per-run figures to `<out>/<study>.csv`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
from pathlib import Path

from rcnnlab import api
from rcnnlab.config import load_config
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.reporting.summary import machine_description

# Every augmentation group off; each variant switches on what it measures.
_NO_AUG = ["augment.hsv_prob=0", "augment.affine_prob=0", "augment.svhn_policy_prob=0",
           "augment.flip_prob=0", "augment.multiscale_sizes=[]"]
# ORAND-CAR-A's image heights run 33-108 px, median 53: multi-scale spans roughly that range.
MULTISCALE = "augment.multiscale_sizes=[40,48,56,64,72]"
_ALL = ["augment.hsv_prob=0.5", "augment.affine_prob=0.5", "augment.svhn_policy_prob=0.5",
        MULTISCALE]

STUDIES: dict[str, dict[str, list[str]]] = {
    "augment": {
        "none": ["augment.enabled=false"],
        "colour jitter": [*_NO_AUG, "augment.hsv_prob=0.5"],
        "affine": [*_NO_AUG, "augment.affine_prob=0.5"],
        "SVHN colour policy": [*_NO_AUG, "augment.svhn_policy_prob=0.5"],
        "multi-scale": [*_NO_AUG, MULTISCALE],
        "all (no flip)": [*_NO_AUG, *_ALL],
        "all + auto anchors": [*_NO_AUG, *_ALL, "model.anchors=auto"],
        "flip": [*_NO_AUG, "augment.flip_prob=0.5"],
    },
}

METRICS = ("AP", "AP50", "AP75", "seq_acc")


def slug(name: str) -> str:
    """A folder name for a variant."""
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_one(config: str | None, overrides: list[str], run_dir: Path, seed: int,
            split: str) -> dict:
    """Train one variant for one seed, tune the threshold on valid, score `split`."""
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    cfg = load_config(config or None, [*overrides, f"train.seed={seed}",
                                       f"out_dir={run_dir.parent}", f"name={run_dir.name}"])
    start = time.perf_counter()
    fit = api.train(cfg, reporter=ProgressReporter(log_every=50))
    api.tune(fit.run_dir)
    result = api.evaluate(fit.run_dir, split=split)
    row = {
        "seed": seed, "iterations": fit.iterations, "train_images": fit.train_images,
        "train_minutes": fit.train_seconds / 60, "wall_minutes": (time.perf_counter() - start)
        / 60, "threshold": result.threshold, "seq_acc": result.seq_acc,
        **{k: result.metrics.as_dict()[k] for k in ("AP", "AP50", "AP75")},
    }
    result_path.write_text(json.dumps(row, indent=2))
    return row


def mean_std(values: list[float]) -> str:
    """`mean +- std` (sample std over seeds; just the value for one seed)."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per variant, mean +- std over its seeds, delta to the first."""
    lines = ["| variant | seeds | mAP | Δ mAP | AP50 | AP75 | sequence acc. | train min |",
             "|---|---|---|---|---|---|---|---|"]
    ref = None
    for name, rows in results.items():
        if not rows:
            continue
        aps = [r["AP"] for r in rows]
        mean_ap = statistics.mean(aps)
        ref = mean_ap if ref is None else ref
        cols = [mean_std(aps), f"{mean_ap - ref:+.3f}"]
        cols += [mean_std([r[k] for r in rows if r[k] is not None])
                 for k in ("AP50", "AP75", "seq_acc")]
        cols.append(f"{statistics.mean(r['train_minutes'] for r in rows):.1f}")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run (or continue) a study and return its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="augment")
    parser.add_argument("--config", default="configs/orand.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3, help="the equal budget, in epochs")
    parser.add_argument("--split", default="valid", help="split scored (orand has only valid)")
    parser.add_argument("--only", nargs="+", help="run these variants (slugs or names)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("overrides", nargs="*", help="extra key=value for every variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    variants = STUDIES[args.study]
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only or slug(k) in args.only}
    out = args.out / args.study
    results: dict[str, list[dict]] = {name: [] for name in variants}
    per_run = []
    for seed in args.seeds:  # seed-major: every variant gets a first seed before any a second
        for name, overrides in variants.items():
            run_dir = out / f"{slug(name)}_s{seed}"
            row = run_one(args.config, [*overrides, f"train.epochs={args.epochs}",
                                        *args.overrides], run_dir, seed, args.split)
            results[name].append(row)
            per_run.append({"variant": name, **row})
            print(f"{name} seed {seed}: mAP {row['AP']:.4f} AP50 {row['AP50']:.4f} "
                  f"seq {row['seq_acc']}", flush=True)
    md = (f"{args.study} ablation, {args.config}, {args.epochs} epochs per run, seeds "
          f"{args.seeds}, scored on {args.split}; {machine_description()}\n\n" + table(results))
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{args.study}.md").write_text(md + "\n")
    with (out.parent / f"{args.study}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_run[0]))
        writer.writeheader()
        writer.writerows(per_run)
    print(md)
    return md


if __name__ == "__main__":
    main()
