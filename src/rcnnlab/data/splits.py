"""Resolve a run's data section into validated train / valid / test splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rcnnlab.config import DataConfig
from rcnnlab.data.coco import CocoData, holdout_split, load_coco, read_json
from rcnnlab.data.yolo import yolo_yaml_splits
from rcnnlab.errors import DatasetError
from rcnnlab.files import write_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def synth_json(out_dir: str | Path, split: str) -> Path:
    """Where the generated dataset keeps a split's annotations."""
    return Path(out_dir) / split / "annotations.json"


def with_synth_paths(cfg: DataConfig) -> DataConfig:
    """The data section with each unset split json pointing at the generated data (when the
    config has a `synth` section); a copy, the given section is left as it is."""
    if cfg.synth is None:
        return cfg
    return cfg.model_copy(update={f"{split}_json": str(synth_json(cfg.synth.out_dir, split))
                                  for split in SPLITS if getattr(cfg, f"{split}_json") is None})


def with_yolo_paths(cfg: DataConfig) -> DataConfig:
    """The data section with each unset split json pointing at `data.yolo` (a data.yaml) when
    the yaml names that split; a copy."""
    if cfg.yolo is None:
        return cfg
    path = Path(cfg.yolo)
    if not path.is_file():
        raise DatasetError(f"{path}: data.yolo names no file. Fix: give the YOLO dataset's "
                           "data.yaml")
    return cfg.model_copy(update={f"{split}_json": str(path) for split in yolo_yaml_splits(path)
                                  if getattr(cfg, f"{split}_json") is None})


def ensure_synth(cfg: DataConfig, progress=None) -> bool:
    """Generate the default house-number data if the config asks for it and it is absent or
    differs from what it asks for (training and the demo call this; evaluation never does).

    Returns True when images were generated.
    """
    if cfg.synth is None:
        return False
    s = cfg.synth
    from rcnnlab.data.synth import GENERATOR_VERSION, generate_dataset

    wanted = {"train": s.n_train, "valid": s.n_valid, "test": s.n_test}
    if all(_synth_matches(synth_json(s.out_dir, split), wanted[split], s.seed, GENERATOR_VERSION)
           for split in SPLITS):
        return False

    log.info("generating house numbers in %s (%d/%d/%d images, seed %d)",
             s.out_dir, s.n_train, s.n_valid, s.n_test, s.seed)
    generate_dataset(Path(s.out_dir), n_train=s.n_train, n_valid=s.n_valid, n_test=s.n_test,
                     seed=s.seed, workers=2, progress=progress)
    return True


def _synth_matches(path: Path, n_images: int, seed: int, version: str) -> bool:
    """Whether a generated split on disk is what the config asks for (else it is remade)."""
    if not path.is_file():
        return False
    try:
        info = json.loads(path.read_text()).get("info", {})
    except json.JSONDecodeError:
        return False
    found = (info.get("num_images"), info.get("seed"), info.get("version"))
    if found != (n_images, seed, version):
        log.info("%s holds %s images of seed %s (generator %s); the config asks for %d of seed "
                 "%d: generating again", path, *found, n_images, seed)
        return False
    return True


def load_splits(cfg: DataConfig, need: tuple[str, ...] = SPLITS) -> dict[str, CocoData]:
    """Load the splits named in `need` that the config provides.

    When there is no valid json and `val_fraction` > 0, valid is held out of train
    (deterministically, every class represented where possible). Generated data is read where
    `ensure_synth` wrote it, never generated here.
    """
    cfg = with_yolo_paths(with_synth_paths(cfg))
    out: dict[str, CocoData] = {}
    wanted = set(need)
    if "valid" in wanted and cfg.valid_json is None and cfg.val_fraction > 0:
        wanted.add("train")
    for split in SPLITS:
        path = getattr(cfg, f"{split}_json")
        if split in wanted and path is not None:
            out[split] = load_coco(path, getattr(cfg, f"{split}_images"),
                                   skip_missing_images=cfg.skip_missing_images,
                                   max_image_pixels=cfg.max_image_pixels, split=split)
    if cfg.valid_json is None and cfg.val_fraction > 0 and "train" in out:
        out["train"], out["valid"] = holdout_split(out["train"], cfg.val_fraction, cfg.split_seed)
        log.info("held out %d of %d training images as valid (data.val_fraction=%.2f)",
                 len(out["valid"].images), len(out["valid"].images) + len(out["train"].images),
                 cfg.val_fraction)
    for split in need:
        if split in ("train", "valid") and split not in out:
            raise DatasetError(f"no {split} split: set data.{split}_json"
                               + (" or data.val_fraction" if split == "valid" else ""))
    if "train" in out and "valid" in out:
        _check_same_categories(out["train"], out["valid"])
    return {k: v for k, v in out.items() if k in need}


def _check_same_categories(a: CocoData, b: CocoData) -> None:
    if [(c["id"], c["name"]) for c in a.categories] != [(c["id"], c["name"]) for c in b.categories]:
        raise DatasetError(f"{b.json_path}: categories differ from {a.json_path}. Fix: export "
                           "every split with the same category list")


def write_holdout_split(json_path: str | Path, out_dir: str | Path, *, fraction: float = 0.1,
                        seed: int = 0, images: str | Path | None = None
                        ) -> tuple[dict[str, tuple[Path, int, int]], Path]:
    """Split a COCO json into `out_dir/train.json` and `out_dir/valid.json` (`holdout_split`:
    deterministic, every class in valid where possible), each keeping the json's other keys
    and its records as they are. Returns each part's (path, images, boxes) by name, and the
    image folder both refer to."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out}: a file, not a folder. Fix: give the folder that "
                           "train.json and valid.json go into")
    data = load_coco(json_path, images)
    tree = read_json(json_path)
    train, valid = holdout_split(data, fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("valid", valid)):
        ids = {img["id"] for img in part.images}
        doc = {k: v for k, v in tree.items() if k not in ("images", "annotations")}
        doc["images"] = [img for img in tree["images"] if img["id"] in ids]
        doc["annotations"] = [a for a in tree["annotations"] if a["image_id"] in ids]
        paths[name] = (write_atomic(out / f"{name}.json", json.dumps(doc)), len(doc["images"]),
                       len(doc["annotations"]))
    return paths, data.image_root.resolve()
