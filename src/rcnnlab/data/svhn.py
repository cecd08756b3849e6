"""SVHN's "format 1" ``digitStruct.mat`` to COCO: :func:`svhn_to_coco`.

Format decisions: category id = digit + 1 with names "0".."9"; SVHN's label 10 is digit 0.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from rcnnlab.data.convert import CocoBuilder
from rcnnlab.data.convert import dataset_error as _error
from rcnnlab.data.images import image_size
from rcnnlab.progress import tracked

__all__ = ["SVHN_CATEGORIES", "svhn_to_coco"]

SVHN_CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]  # category_id = digit + 1
_SVHN_FIELDS = ("label", "left", "top", "width", "height")


def _mat_string(dataset: h5py.Dataset) -> str:
    """A MATLAB char array (uint16 code units in HDF5) as a str."""
    return "".join(map(chr, dataset[()].ravel()))


def _mat_numbers(mat: h5py.File, dataset: h5py.Dataset) -> list[float]:
    """A struct field's values: stored inline when the image has one digit, else as references."""
    values = dataset[()].ravel()
    if dataset.dtype == h5py.ref_dtype:
        return [float(mat[ref][()].item()) for ref in values]
    return [float(v) for v in values]


def svhn_to_coco(mat_path: Path, image_dir: Path | None = None) -> tuple[dict, Path]:
    """Convert an SVHN "format 1" ``digitStruct.mat`` (MATLAB v7.3, i.e. HDF5) to a COCO dict.

    Each entry of the .mat has an image ``name`` and a ``bbox`` struct with one ``label``,
    ``left``, ``top``, ``width``, ``height`` per digit. SVHN's label 10 means digit 0; the
    categories are ids 1..10 named "0".."9" (category_id = digit + 1, the project's convention;
    the number is read from the names). ``file_name`` is the image name, relative to
    ``image_dir`` (default: the .mat's folder), and the image id is its numeric stem (``1.png``
    -> 1; the 1-based entry index instead when some name is not numeric). Sizes come from the
    image headers; boxes keep the .mat's order and are clipped to their image (counted).

    Entries whose image file is not in ``image_dir`` are skipped, counted in
    ``info["skipped_missing_images"]`` and logged: only the names are read for every entry, the
    boxes only for the images present. Returns (coco, image_dir).
    """
    mat_path = Path(mat_path)
    image_dir = Path(image_dir) if image_dir is not None else mat_path.parent
    fix = "give SVHN's format-1 digitStruct.mat (train/test/extra .tar.gz of the SVHN site)"
    if not mat_path.is_file():
        raise _error(mat_path, "file not found", fix)
    if not h5py.is_hdf5(mat_path):
        raise _error(mat_path, "not a MATLAB v7.3 (HDF5) file", fix)
    if not image_dir.is_dir():
        raise _error(image_dir, "image folder not found", "pass image_dir= (the PNGs' folder)")
    present = {p.name for p in image_dir.iterdir()}
    try:
        return _svhn_entries(mat_path, image_dir, present, fix)
    except OSError as exc:  # h5py's error for a truncated or damaged file
        raise _error(mat_path, f"cannot be read ({exc}): truncated or damaged", fix) from None


def _svhn_entries(mat_path: Path, image_dir: Path, present: set[str],
                  fix: str) -> tuple[dict, Path]:
    """The entries of the .mat whose image is present, as a COCO dict (see svhn_to_coco)."""
    out = CocoBuilder("svhn", mat_path, image_dir, ("skipped_missing_images",))
    with h5py.File(mat_path, "r") as mat:
        try:
            name_refs = mat["digitStruct/name"][()].ravel()
            bbox_refs = mat["digitStruct/bbox"][()].ravel()
        except KeyError:
            raise _error(mat_path, "no digitStruct/name and digitStruct/bbox", fix) from None
        names = [_mat_string(mat[ref])
                 for ref in tracked(name_refs, f"reading {mat_path.name}'s names")]
        if len(set(names)) != len(names):
            raise _error(mat_path, "an image name is listed twice", fix)
        kept = [(i, name) for i, name in enumerate(names) if name in present]
        out.counts["skipped_missing_images"] = len(names) - len(kept)
        numeric = all(Path(name).stem.isdigit() for _, name in kept)
        for i, name in tracked(kept, f"reading {mat_path.name}'s boxes"):
            image = out.add_image(int(Path(name).stem) if numeric else i + 1, name,
                                  *image_size(image_dir / name))
            try:
                group = mat[bbox_refs[i]]
                fields = [_mat_numbers(mat, group[key]) for key in _SVHN_FIELDS]
            except KeyError:
                raise _error(mat_path, f"entry {i + 1} ({name}): bbox lacks one of "
                             f"{', '.join(_SVHN_FIELDS)}", fix) from None
            if len({len(values) for values in fields}) != 1:
                raise _error(mat_path, f"entry {i + 1} ({name}): bbox fields differ in length",
                             fix)
            for label, left, top, width, height in zip(*fields, strict=True):
                if not (label.is_integer() and 1 <= label <= 10):
                    raise _error(mat_path, f"entry {i + 1} ({name}): label {label:g} is not "
                                 "1..10 (10 means digit 0)", fix)
                digit = int(label) % 10
                out.add_box(image, digit + 1, left, top, left + width, top + height)
    return out.finish(SVHN_CATEGORIES), image_dir
