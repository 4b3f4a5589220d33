"""``imagefolder``: a directory of class folders, checked whole before anything trains on it.

With ``train/`` and ``test/`` (optionally ``val/``) sub-directories those are the splits;
otherwise the folder is one pool, split 90/10 train/test stratified (seed 0; validation carved
from the 90) for training, and evaluated whole by ``evaluate`` (split ``all``).

Layout rules (each broken rule is a one-line :class:`DataError` naming the folder or file):

* at least two class folders; every class folder holds at least one image (an empty class would
  be an output the model never sees an example of, and a class no metric can be computed for -
  refused rather than dropped, because dropping it would silently renumber the other classes);
* ``test/`` and ``val/`` have the same class folders as ``train/``;
* every file with an image suffix is a readable image (its header is parsed at load time, see
  :mod:`robustdistill.data.images`); hidden files and folders (``.DS_Store``, macOS ``._x.png``
  resource forks, ``.ipynb_checkpoints``) are skipped, other files without an image suffix ignored;
* one geometry for all files of all splits: without ``--image-size`` every image must be square and
  of the same size; 1 channel if every file is grayscale, else 3 (see ``decide_geometry``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .folder_split import FolderSplit
from .images import IMAGE_SUFFIXES, decide_geometry, read_headers
from .sampling import SPLIT_SEED, carve_val, renamed, stratified_split
from .spec import LoadOptions, RunDefaults, register_dataset
from .splits import DatasetInfo, DatasetSplits

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Same budget and batch as the torchvision datasets; epochs are the method's paper schedule.
FOLDER_DEFAULTS = RunDefaults(eps=8 / 255, batch_size=128, epochs=None)
_SUFFIXES = ", ".join(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ClassFolders:
    """One scanned folder of class folders: sorted class names, files in a fixed shuffled order."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]


@register_dataset("imagefolder", description="--data-dir with train/ and test/ class folders, or just class folders",
                  defaults=FOLDER_DEFAULTS)
def load_imagefolder(options: LoadOptions) -> DatasetSplits:
    """A folder of class folders (see the module docstring); ``options.data_dir`` is required."""
    if options.data_dir is None:
        raise DataError("--dataset imagefolder needs --data-dir pointing at a folder of class folders")
    if options.image_size is not None and options.image_size < 1:
        raise DataError(f"--image-size {options.image_size} must be a positive number of pixels, e.g. 32")
    root = options.data_dir
    if not root.exists():
        raise DataError(f"imagefolder {str(root)!r} does not exist; pass --data-dir to a folder of class folders")
    if not root.is_dir():
        raise DataError(f"imagefolder {str(root)!r} is a file, not a folder; pass --data-dir to a folder of class folders")
    layout = scan_layout(root)
    headers = read_headers([f for folder in layout.values() for f in folder.files])
    size, channels, notes = decide_geometry(headers, options.image_size)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    classes = layout["train" if "train" in layout else "all"].classes
    info = DatasetInfo("imagefolder", len(classes), (channels, size, size), classes, mean, std,
                       crop_padding=max(1, size // 8), flip=True)
    return _build_splits(layout, info, options.val_size, notes)


def scan_layout(root: Path) -> dict[str, ClassFolders]:
    """``{"train", "test"[, "val"]}`` class folders when ``root`` has train/ and test/, else ``{"all"}``."""
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        return {"all": _at_least_two(scan_class_folders(root))}
    layout = {"train": _at_least_two(scan_class_folders(root / "train"))}
    for name in ("test", "val"):
        if name == "test" or (root / name).is_dir():
            layout[name] = scan_class_folders(root / name)
            _same_classes(layout[name], layout["train"])
    return layout


def _at_least_two(folder: ClassFolders) -> ClassFolders:
    if len(folder.classes) == 1:
        raise DataError(f"{str(folder.root)!r} holds one class folder ({folder.classes[0]!r}); a classifier needs "
                        "at least 2 classes - add one folder per class")
    return folder


def _same_classes(folder: ClassFolders, train: ClassFolders) -> None:
    if folder.classes != train.classes:
        missing = sorted(set(train.classes) - set(folder.classes))
        extra = sorted(set(folder.classes) - set(train.classes))
        raise DataError(f"{str(folder.root)!r} has classes {list(folder.classes[:5])}... but {str(train.root)!r} has "
                        f"{list(train.classes[:5])}... (missing: {missing[:5]}, extra: {extra[:5]}); they must match")


def scan_class_folders(root: Path) -> ClassFolders:
    """Class folders of ``root`` in sorted order, their image files in a fixed shuffled order (seed 0),
    so that the first N examples of a split - what ``--n-examples`` evaluates - cover every class
    rather than only the first.

    Raises:
        DataError: ``root`` or a folder below it cannot be read, holds no class folders, or a class
            folder holds no images.
    """
    classes = _class_names(root)
    files: list[str] = []
    labels: list[int] = []
    per_class = [_images_in(root / cls) for cls in classes]
    if not any(images for images, _ in per_class):
        raise DataError(f"{str(root)!r} holds class folders but no images ({_SUFFIXES}); "
                        f"expected {root}/CLASS_NAME/*.png")
    for label, (cls, (images, others)) in enumerate(zip(classes, per_class)):
        if not images:
            seen = f"; it holds {len(others)} other file(s), e.g. {others[0]!r}" if others else ""
            raise DataError(f"class folder {str(root / cls)!r} holds no images ({_SUFFIXES}){seen}; "
                            "add its images or delete the folder")
        files.extend(images)
        labels.extend([label] * len(images))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    return ClassFolders(root, tuple(classes), tuple(files[i] for i in order), tuple(labels[i] for i in order))


def _class_names(root: Path) -> list[str]:
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read folder {str(root)!r} ({exc.strerror}); fix its permissions or pass another --data-dir") from None
    classes = sorted(d.name for d in entries if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(e.suffix.lower() in IMAGE_SUFFIXES for e in entries)
        if loose:
            raise DataError(f"{str(root)!r} holds images but no class folders; move each class's images into its "
                            f"own folder, {root}/CLASS_NAME/")
        raise DataError(f"{str(root)!r} holds no class folders with images; expected {root}/CLASS_NAME/*.png")
    return classes


def _images_in(folder: Path) -> tuple[list[str], list[str]]:
    """(image files, names of other files) below ``folder``, recursively, in sorted path order."""
    _check_readable(folder)
    images: list[str] = []
    others: list[str] = []
    skip = len(str(folder))
    for path in sorted(folder.rglob("*")):
        name = str(path)
        if os.sep + "." in name[skip:]:  # hidden, or inside a hidden folder
            continue
        kind = _kind(path)
        if kind == "dir":
            if not path.is_symlink():  # rglob does not descend into symlinked folders
                _check_readable(path)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            others.append(path.name)
        elif kind == "file":
            images.append(name)
        elif kind == "missing":
            raise DataError(f"{name!r} is a broken symbolic link; fix or delete it")
        else:  # a pipe or device with an image suffix: opening it could block forever
            raise DataError(f"{name!r} is not a regular file (a pipe, socket or device); delete it")
    return images, others


def _kind(path: Path) -> str:
    """``dir``, ``file``, ``missing`` (a dangling symlink) or ``other``, with one stat call."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _check_readable(folder: Path) -> None:
    # rglob silently skips folders it may not list; an unreadable class folder would look empty.
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"cannot read folder {str(folder)!r} (permission denied); fix its permissions "
                        "or move it out of --data-dir")


def _build_splits(layout: dict[str, ClassFolders], info: DatasetInfo, val_size: int | None,
                  notes: list[str]) -> DatasetSplits:
    channels, size, _ = info.input_size

    def make(name: str, folder: ClassFolders) -> FolderSplit:
        return FolderSplit(name, folder.files, torch.tensor(folder.labels, dtype=torch.long), size, channels)

    if "all" not in layout:
        test = make("test", layout["test"])
        if "val" in layout:
            return DatasetSplits(info, make("train", layout["train"]), make("val", layout["val"]), test, notes)
        train, val = carve_val(make("train", layout["train"]), val_size)
        return DatasetSplits(info, train, val, test, notes)
    everything = make("all", layout["all"])
    tr, te = stratified_split(np.asarray(layout["all"].labels), [0.9, 0.1])
    train, val = carve_val(everything.subset(torch.from_numpy(tr)), val_size)
    test = renamed(everything.subset(torch.from_numpy(te)), "test")
    note = ("no train/test sub-folders: training uses a fixed stratified 90/10 train/test split of the folder "
            "(validation carved from the 90)")
    return DatasetSplits(info, train, val, test, [note, *notes], whole=everything)
