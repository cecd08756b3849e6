"""Ablations at an equal training budget: each variant trained over the same seeds, then tuned and
scored on the same held-out split; prints mean +- std of mAP, AP50, AP75 and sequence accuracy.

A variant is the base config plus overrides, trained for the same number of epochs (so the same
iterations and images) from the same seeds. Four other kinds of row exist:
* `reuse`: no training, another variant's run scored with `eval.*` inference options
  (soft-NMS, TTA), so the row differs from that run by inference alone;
* `finetune`: a second stage started from another variant's best checkpoint for
  `--extra-epochs` at `--finetune-lr-mult` x lr (policy gradient, as Rao et al. run it),
  against the same extra epochs of plain training, the equal-budget comparison;
* `iterations_of`: trained with its epochs capped at another variant's iterations per epoch
  (repeat-factor sampling lengthens an epoch to sum(r_i) images).
A finished run leaves `result.json` in its folder and is skipped when the script is run again,
so an interrupted study continues where it stopped and more seeds can be added later;
`--report-only` prints the table of what has finished.

Every row's threshold is tuned over `--sweep MIN MAX` (default 0.05 0.95, wider than
`rcnnlab tune`'s 0.45-0.90: focal loss scores lower than cross-entropy, and a range that cuts
its scores off would charge the method for the sweep). `--rescore` tunes and scores finished
runs again (no training) where their result.json was scored over another range.

    python benchmarks/ablation.py --study augment --seeds 0 1 --epochs 3
    python benchmarks/ablation.py --study objectives --seeds 0 1 2 --epochs 3 --extra-epochs 1
    python benchmarks/ablation.py --study augment --seeds 0 1 --report-only

Studies:
    speed       the CPU defaults against the float32 FPN-256 ones before (`old_defaults.py`),
                and the candidates measured on the way.
    augment     no augmentation, each augmentation group alone, all of them, and all of them
                with auto-fitted anchors.
    objectives  baseline vs focal loss, class-weighted CE, repeat-factor sampling, AVW, RLO,
                soft-NMS, TTA, and policy-gradient fine-tuning vs plain continued training.

The table is printed and written to `<out>/<study>.md`, per-run figures to `<out>/<study>.csv`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from old_defaults import OLD_DEFAULTS  # benchmarks/, beside this script
from rcnnlab import api
from rcnnlab.config import load_config
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.runs.environment import machine_description

log = logging.getLogger("ablation")


@dataclass(frozen=True)
class Variant:
    """One row of a study (see the module docstring)."""

    train: tuple[str, ...] = ()  # overrides of the training run
    eval: tuple[str, ...] = ()  # eval.* overrides for tune and evaluate
    reuse: str | None = None  # score this variant's run instead of training
    finetune: str | None = None  # second stage from this variant's best.pt
    # Cap each epoch at this variant's iterations per epoch (same seed): a repeat-factor epoch
    # is sum(r_i) images long, ~1.3x the plain one on ORAND, which is not an equal budget.
    iterations_of: str | None = None


# Every augmentation group off; each variant switches on what it measures.
_NO_AUG = ("augment.hsv_prob=0", "augment.affine_prob=0", "augment.svhn_policy_prob=0",
           "augment.flip_prob=0", "augment.multiscale_sizes=[]")
# ORAND-CAR-A's image heights run 33-108 px, median 53: multi-scale spans roughly that range.
MULTISCALE = "augment.multiscale_sizes=[40,48,56,64,72]"
_ALL = ("augment.hsv_prob=0.5", "augment.affine_prob=0.5", "augment.svhn_policy_prob=0.5",
        MULTISCALE)

_READ = ("eval.read_iou=0.4",)

STUDIES: dict[str, dict[str, Variant]] = {
    # the faster CPU defaults against the old ones, and candidates; every row reads
    # its numbers the same way (eval.read_iou), so sequence accuracy compares the models
    "speed": {
        "old defaults": Variant(OLD_DEFAULTS, eval=_READ),
        "defaults": Variant(eval=_READ),
        "defaults + levels 8-32": Variant(("model.fpn_strides=[8,16,32]",), eval=_READ),
        "defaults, fp32": Variant(("train.amp=off", "eval.amp=off"), eval=_READ),
    },
    "augment": {
        "none": Variant(("augment.enabled=false",)),
        "colour jitter": Variant((*_NO_AUG, "augment.hsv_prob=0.5")),
        "affine": Variant((*_NO_AUG, "augment.affine_prob=0.5")),
        "SVHN colour policy": Variant((*_NO_AUG, "augment.svhn_policy_prob=0.5")),
        "multi-scale": Variant((*_NO_AUG, MULTISCALE)),
        "all (no flip)": Variant((*_NO_AUG, *_ALL)),
        "all + auto anchors": Variant((*_NO_AUG, *_ALL, "model.anchors=auto")),
        "flip": Variant((*_NO_AUG, "augment.flip_prob=0.5")),
    },
    "objectives": {
        "baseline": Variant(),
        "focal loss": Variant(("train.roi_loss=focal",)),
        "class-weighted CE": Variant(("train.roi_loss=weighted_ce",
                                      "train.class_weights=inverse_frequency")),
        # ORAND's digits are in 27-51% of the images: t = 0.5 repeats the rarer ones up to 1.4x
        "repeat-factor sampling": Variant(("data.repeat_factor_threshold=0.5",),
                                          iterations_of="baseline"),
        "AVW": Variant(("train.scale_weighting=avw",)),
        "RLO": Variant(("train.scale_weighting=rlo",)),
        "soft-NMS linear": Variant(eval=("eval.nms=linear",), reuse="baseline"),
        "soft-NMS gaussian": Variant(eval=("eval.nms=gaussian",), reuse="baseline"),
        "TTA scales + WBF": Variant(eval=("eval.tta_scales=[0.8,1,1.25]", "eval.tta_merge=wbf"),
                                    reuse="baseline"),
        "baseline + continued": Variant(finetune="baseline"),
        "baseline + policy gradient": Variant(("train.roi_loss=policy_gradient",),
                                              finetune="baseline"),
    },
}


def slug(name: str) -> str:
    """A folder name for a variant."""
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_folder(out: Path, name: str, seed: int) -> Path:
    """The folder of a variant's run for one seed."""
    return out / f"{slug(name)}_s{seed}"


def train_and_score(cfg, run_dir: Path, seed: int, split: str, eval_overrides: list[str],
                    train: bool, sweep_range: tuple[float, float], save: bool | None = None,
                    row: dict | None = None) -> dict:
    """Train (when `train`), tune the threshold on valid over `sweep_range`, score `split`.

    A reused run is scored without saving anything into it (its own threshold and eval file
    stay as they are); `save` defaults to `train`. `row` carries the training figures of a run
    scored again.
    """
    start = time.perf_counter()
    row = dict(row or {"seed": seed})
    if train:
        # a folder without result.json holds an unfinished attempt: it starts over
        fit = api.train(cfg, exist_ok=True, reporter=ProgressReporter(log_every=50))
        row.update(iterations=fit.iterations, train_images=fit.train_images,
                   train_minutes=fit.train_seconds / 60)
    save = train if save is None else save
    sweep = api.tune(run_dir, overrides=[*eval_overrides, f"eval.sweep_min={sweep_range[0]}",
                                         f"eval.sweep_max={sweep_range[1]}"], save=save)
    result = api.evaluate(run_dir, split=split, overrides=eval_overrides, save=save,
                          threshold=sweep.best)
    row.update(score_minutes=(time.perf_counter() - start) / 60, threshold=result.threshold,
               sweep=list(sweep_range), seq_acc=result.seq_acc,
               **{k: result.metrics.as_dict()[k] for k in ("AP", "AP50", "AP75")})
    return row


def run_variant(config: str | None, name: str, variant: Variant, out: Path, seed: int,
                common: list[str], args) -> dict | None:
    """One variant for one seed; its result.json when it already ran (None in report-only)."""
    run_dir = run_folder(out, name, seed)
    result_path = run_dir / "result.json"
    sweep_range = tuple(args.sweep)
    if result_path.is_file():
        row = json.loads(result_path.read_text())
        if args.report_only or not args.rescore or tuple(row.get("sweep", ())) == sweep_range:
            return row
        source = Path(row["reuses"]) if variant.reuse else run_dir
        log.info("%s seed %d: scoring again over thresholds %s", name, seed, sweep_range)
        row = train_and_score(None, source, seed, args.split, list(variant.eval), train=False,
                              sweep_range=sweep_range, save=not variant.reuse, row=row)
        result_path.write_text(json.dumps(row, indent=2))
        return row
    if args.report_only:
        return None
    overrides = [*common, *variant.train, f"train.seed={seed}"]
    if variant.reuse:
        source = run_folder(out, variant.reuse, seed)
        if not (source / "result.json").is_file():
            raise RuntimeError(f"{name!r} scores {variant.reuse!r}'s run, which has not run")
        row = train_and_score(None, source, seed, args.split, list(variant.eval), train=False,
                              sweep_range=sweep_range)
        row["reuses"] = str(source)
    else:
        if variant.finetune:
            source = run_folder(out, variant.finetune, seed)
            ckpt = source / "checkpoints" / "best.pt"
            if not ckpt.is_file():
                raise RuntimeError(f"{name!r} fine-tunes {variant.finetune!r}, which has not run")
            base_lr = load_config(config or None, overrides).train.lr
            overrides += [f"train.finetune_from={ckpt}", f"train.epochs={args.extra_epochs}",
                          f"train.lr={base_lr * args.finetune_lr_mult}"]
        if variant.iterations_of:
            source = run_folder(out, variant.iterations_of, seed) / "result.json"
            if not source.is_file():
                raise RuntimeError(f"{name!r} takes {variant.iterations_of!r}'s iterations per "
                                   "epoch, which has not run")
            ref = json.loads(source.read_text())
            overrides.append(f"train.iters_per_epoch={ref['iterations'] // args.epochs}")
        cfg = load_config(config or None, [*overrides, f"out_dir={out}", f"name={run_dir.name}"])
        row = train_and_score(cfg, run_dir, seed, args.split, list(variant.eval), train=True,
                              sweep_range=sweep_range)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(row, indent=2))
    return row


def mean_std(values: list[float], signed: bool = False) -> str:
    """`mean +- std` (sample std over seeds; just the value for one seed)."""
    if not values:
        return "n/a"
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.3f}"
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per variant, mean +- std over its seeds; its mAP minus the first
    row's, seed by seed, as mean +- std."""
    lines = ["| variant | seeds | mAP | Δ mAP (paired) | AP50 | AP75 | sequence acc. | "
             "iterations | train min |", "|---|---|---|---|---|---|---|---|---|"]
    ref: dict[int, float] | None = None  # the first row's mAP per seed
    for name, rows in results.items():
        if not rows:
            continue
        aps = [r["AP"] for r in rows]
        ref = {r["seed"]: r["AP"] for r in rows} if ref is None else ref
        # paired by seed: the spread of the per-seed differences, not of the two means
        cols = [mean_std(aps), mean_std([r["AP"] - ref[r["seed"]] for r in rows
                                         if r["seed"] in ref], signed=True)]
        cols += [mean_std([r[k] for r in rows if r[k] is not None])
                 for k in ("AP50", "AP75", "seq_acc")]
        iterations = sorted({r["iterations"] for r in rows if "iterations" in r})
        cols.append("/".join(map(str, iterations)) if iterations else "-")
        minutes = [r["train_minutes"] for r in rows if "train_minutes" in r]
        cols.append(f"{statistics.mean(minutes):.1f}" if minutes else "0 (inference only)")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run (or continue, or report) a study and return its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="augment")
    parser.add_argument("--config", default="orand")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3, help="the equal budget, in epochs")
    parser.add_argument("--extra-epochs", type=int, default=1,
                        help="fine-tuning stages: epochs after the source run")
    parser.add_argument("--finetune-lr-mult", type=float, default=0.1,
                        help="fine-tuning stages: lr = this x the config's lr")
    parser.add_argument("--split", default="valid", help="split scored (orand has only valid)")
    parser.add_argument("--only", nargs="+", help="run these variants (slugs or names)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: the table of the runs that finished")
    parser.add_argument("--sweep", type=float, nargs=2, default=[0.05, 0.95],
                        metavar=("MIN", "MAX"), help="threshold range tuned for every row")
    parser.add_argument("--rescore", action="store_true",
                        help="tune and score finished runs again where their sweep range differs")
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
    # an equal budget in epochs: a recipe's wall-clock budget (orand's 10 minutes) is off
    common = [f"train.epochs={args.epochs}", "train.time_budget=null", *args.overrides]
    for seed in args.seeds:  # seed-major: every variant gets a first seed before any a second
        for name, variant in variants.items():
            row = run_variant(args.config, name, variant, out, seed, common, args)
            if row is None:
                continue
            results[name].append(row)
            per_run.append({"variant": name, **row})
            print(f"{name} seed {seed}: mAP {row['AP']:.4f} AP50 {row['AP50']:.4f} "
                  f"seq {row['seq_acc']}", flush=True)
    budget = f"{args.epochs} epochs per run"
    if any(v.finetune for v in variants.values()):
        budget += (f" (+{args.extra_epochs} at {args.finetune_lr_mult:g} x lr for the fine-tuning"
                   " rows, whose train min is that second stage)")
    md = (f"{args.study} ablation, {args.config}, {budget}, seeds {args.seeds}, threshold "
          f"tuned over {args.sweep[0]:g}-{args.sweep[1]:g} on valid, scored on {args.split}; "
          f"{machine_description()}\n\n" + table(results))
    stale = sum(tuple(r.get("sweep", ())) != tuple(args.sweep) for r in per_run)
    if stale:
        md += (f"\n\n{stale} of {len(per_run)} runs were tuned over another threshold range: "
               "run again with --rescore.")
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{args.study}.md").write_text(md + "\n")
    if per_run:
        fields = list(dict.fromkeys(k for row in per_run for k in row))
        with (out.parent / f"{args.study}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(per_run)
    print(md)
    return md


if __name__ == "__main__":
    main()
