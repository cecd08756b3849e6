"""`rcnnlab data ...`: generate, split, convert, describe and show datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rcnnlab.cli.app import data_app
from rcnnlab.cli.common import (
    ConfigOpt,
    OverridesArg,
    console,
    err_console,
    in_range,
    user_errors,
)
from rcnnlab.errors import ConfigError


# ---------------------------------------------------------------------------------- data
@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (train/, valid/, test/).")] = Path(
        "data/synth"),
    train: Annotated[int, typer.Option(help="Training images.")] = 4000,
    valid: Annotated[int, typer.Option(help="Validation images.")] = 300,
    test: Annotated[int, typer.Option(help="Test images.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes.")] = 2,
    grid: Annotated[Path | None, typer.Option(help="Also write a PNG grid of samples.")] = None,
):
    """Generate SVHN-like house-number images with per-digit COCO boxes (categories "0".."9")."""
    from rich.progress import Progress

    from rcnnlab.data.synth import generate_dataset
    from rcnnlab.reporting.samples import sample_grid

    for option, value, low in (("--train", train, 0), ("--valid", valid, 0), ("--test", test, 0),
                               ("--seed", seed, 0), ("--workers", workers, 1)):
        in_range(option, value, low)
    with Progress(console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("generating", total=train + valid + test)
        paths = generate_dataset(out, n_train=train, n_valid=valid, n_test=test, seed=seed,
                                 workers=workers, progress=lambda n: bar.advance(task, n))
    for split, path in paths.items():
        console.print(f"{split}: {path}")
    if grid is not None:
        console.print(f"grid: {sample_grid(grid, seed=seed)}")


@data_app.command("split")
@user_errors
def data_split(
    json_path: Annotated[Path, typer.Argument(help="COCO json to split.")],
    out: Annotated[Path, typer.Option(help="Folder for train.json and valid.json.")],
    fraction: Annotated[float, typer.Option(help="Share of images held out as valid.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    images: Annotated[Path | None, typer.Option(
        help="Image folder (default: beside the json).")] = None,
):
    """Deterministic train/valid split of a COCO json, every class in valid where possible."""
    from rcnnlab.data.splits import write_holdout_split

    in_range("--seed", seed, 0)
    paths, root = write_holdout_split(json_path, out, fraction=fraction, seed=seed,
                                      images=images)
    for name, (path, n_images, n_boxes) in paths.items():
        console.print(f"{name}: {n_images} images, {n_boxes} boxes -> {path}")
    console.print(f"use: data.train_json={paths['train'][0]} data.train_images={root} "
                  f"data.valid_json={paths['valid'][0]} data.valid_images={root}")


@data_app.command("convert")
@user_errors
def data_convert(
    source: Annotated[Path, typer.Argument(
        help="yolo: dataset folder (data.yaml) or split folder; svhn: digitStruct.mat; "
        "voc: folder of xml annotations.")],
    out: Annotated[Path, typer.Option(help="COCO json to write.")],
    fmt: Annotated[str, typer.Option("--from", help="yolo | svhn | voc")] = "yolo",
    split: Annotated[str | None, typer.Option(help="yolo: split of a dataset folder.")] = None,
    images: Annotated[Path | None, typer.Option(help="svhn/voc: image folder.")] = None,
):
    """Convert YOLO txt, SVHN digitStruct.mat or Pascal VOC xml into a COCO json."""
    from rcnnlab.data.convert import write_coco
    from rcnnlab.data.svhn import svhn_to_coco
    from rcnnlab.data.voc import voc_to_coco
    from rcnnlab.data.yolo import yolo_to_coco

    if fmt == "yolo":
        coco, root = yolo_to_coco(source, split)
    elif fmt == "svhn":
        coco, root = svhn_to_coco(source, images)
    elif fmt == "voc":
        coco, root = voc_to_coco(source, images)
    else:
        raise ConfigError(f"--from {fmt!r}: use yolo, svhn or voc")
    path = write_coco(coco, out)
    console.print(f"{len(coco['images'])} images, {len(coco['annotations'])} boxes, "
                  f"{len(coco['categories'])} categories -> {path}")
    console.print(f"image root: {root} (use data.*_images={root})")


@data_app.command("stats")
@user_errors
def data_stats(
    json_path: Annotated[Path, typer.Argument(help="COCO json.")],
    images: Annotated[Path | None, typer.Option(help="Image folder (default: beside json).")]
    = None,
    png: Annotated[Path | None, typer.Option(help="Also write the histograms as a PNG.")] = None,
):
    """Class distribution, boxes per image, image sizes and COCO small/medium/large boxes."""
    from rcnnlab.data.coco import load_coco
    from rcnnlab.data.stats import compute_stats, format_stats, plot_stats

    stats = compute_stats(load_coco(json_path, images))
    console.print(format_stats(stats), highlight=False)
    if png is not None:
        console.print(f"histograms: {plot_stats(stats, png)}")


@data_app.command("show")
@user_errors
def data_show(
    json_path: Annotated[Path, typer.Argument(help="COCO json.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("augmented.png"),
    images: Annotated[Path | None, typer.Option(help="Image folder (default: beside json).")]
    = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    n: Annotated[int, typer.Option(help="Samples in the grid.")] = 16,
    seed: Annotated[int, typer.Option(help="Which images and which augmentations.")] = 0,
):
    """Draw N augmented training samples (config's augment section) with their boxes."""
    in_range("--n", n, 1)
    in_range("--seed", seed, 0)
    from rcnnlab import api
    from rcnnlab.data.categories import digit_names
    from rcnnlab.data.coco import load_coco
    from rcnnlab.data.transforms import build_train_transforms
    from rcnnlab.reporting.samples import render_augmented_grid

    # as training would: the recipe's augmentation, or without one the plan for this data
    cfg = api.configure(config, [*(api.data_overrides(json_path) if config is None else []),
                                 *(overrides or [])])
    data = load_coco(json_path, images)
    transforms = build_train_transforms(cfg.augment,
                                        digit_classes=digit_names(data.categories) is not None)
    sides = cfg.augment.multiscale_sizes if cfg.augment.enabled else []
    png = render_augmented_grid(data, transforms, out, n=n, seed=seed, short_sides=sides,
                                max_size=cfg.model.max_size)
    console.print(f"grid: {png}")


