"""``cifar10``, ``cifar100``, ``svhn``: torchvision datasets read from ``--data-dir``.

Downloaded only with ``--download``. torchvision checks every file's md5 sum and says "not found
or corrupted" either way; :func:`diagnose` tells the two apart so the error says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError
from .sampling import carve_val
from .spec import LoadOptions, RunDefaults, register_dataset
from .splits import DatasetInfo, DatasetSplits, TensorSplit

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The usual budget for 32x32 natural images (RobustBench's Linf threat model), CIFAR-style batches;
# epochs are left to the method's paper schedule.
PAPER_DEFAULTS = RunDefaults(eps=8 / 255, batch_size=128, epochs=None)


@dataclass(frozen=True)
class _Source:
    pretty: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool


_SOURCES = {
    "cifar10": _Source("CIFAR-10", CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, flip=True),
    "cifar100": _Source("CIFAR-100", CIFAR100_MEAN, CIFAR100_STD, crop_padding=4, flip=True),
    # No flips: mirrored digits are other digits (or none).
    "svhn": _Source("SVHN", SVHN_MEAN, SVHN_STD, crop_padding=2, flip=False),
}


@register_dataset("cifar10", description="torchvision CIFAR-10 from --data-dir (--download to fetch)",
                  defaults=PAPER_DEFAULTS, channels=3, image_size=32, num_classes=10, class_names=CIFAR10_CLASSES)
def load_cifar10(options: LoadOptions) -> DatasetSplits:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB) from ``options.data_dir`` (default ``data``)."""
    return _load("cifar10", options)


# CIFAR-100's class names are read from the dataset's meta file (not repeated here).
@register_dataset("cifar100", description="torchvision CIFAR-100 from --data-dir (--download to fetch)",
                  defaults=PAPER_DEFAULTS, channels=3, image_size=32, num_classes=100)
def load_cifar100(options: LoadOptions) -> DatasetSplits:
    """CIFAR-100 (fine labels; 50,000 train / 10,000 test, 32x32 RGB) from ``options.data_dir`` (default ``data``)."""
    return _load("cifar100", options)


@register_dataset("svhn", description="torchvision SVHN from --data-dir (--download to fetch)",
                  defaults=PAPER_DEFAULTS, channels=3, image_size=32, num_classes=10,
                  class_names=tuple(str(d) for d in range(10)))
def load_svhn(options: LoadOptions) -> DatasetSplits:
    """SVHN (``train`` 73,257 / ``test`` 26,032, 32x32 RGB, label 0 = digit 0) from ``options.data_dir``."""
    return _load("svhn", options)


def _load(key: str, options: LoadOptions) -> DatasetSplits:
    source = _SOURCES[key]
    root = options.data_dir or Path("data")
    train_ds, test_ds = _open(key, root, options.download)
    to_split = _svhn_split if key == "svhn" else _cifar_split
    classes = tuple(str(d) for d in range(10)) if key == "svhn" else tuple(train_ds.classes)
    train, val = carve_val(to_split(train_ds, "train"), options.val_size)
    info = DatasetInfo(key, len(classes), (3, 32, 32), classes, source.mean, source.std,
                       crop_padding=source.crop_padding, flip=source.flip)
    return DatasetSplits(info, train, val, to_split(test_ds, "test"))


def _svhn_split(ds: Any, name: str) -> TensorSplit:
    return TensorSplit(name, torch.from_numpy(ds.data), torch.from_numpy(np.asarray(ds.labels)))


def _cifar_split(ds: Any, name: str) -> TensorSplit:
    return TensorSplit(name, torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))


def _constructors(key: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    import torchvision

    if key == "svhn":
        svhn = torchvision.datasets.SVHN
        return (lambda root, dl: svhn(root, split="train", download=dl)), (lambda root, dl: svhn(root, split="test", download=dl))
    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    return (lambda root, dl: cls(root, train=True, download=dl)), (lambda root, dl: cls(root, train=False, download=dl))


def _open(key: str, root: Path, download: bool) -> tuple[Any, Any]:
    pretty = _SOURCES[key].pretty
    make_train, make_test = _constructors(key)
    try:
        return make_train(str(root), download), make_test(str(root), download)
    except RuntimeError as exc:
        if "not found" in str(exc).lower() or "corrupted" in str(exc).lower():
            raise DataError(diagnose(key, root) or (
                f"{pretty} not found under {str(root)!r}; pass --data-dir to where it is, or add --download to fetch it"
            )) from None
        raise DataError(f"could not read {pretty} from {str(root)!r}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise DataError(f"could not download {pretty} into {str(root)!r} ({exc}); download it elsewhere and pass --data-dir") from None


def _expected_files(key: str, root: Path) -> tuple[Path, list[tuple[Path, str]], tuple[Path, str] | None]:
    """(folder, [(file, md5)], (archive, md5) or None) - the files torchvision checks for ``key``."""
    import torchvision

    if key == "svhn":
        splits = torchvision.datasets.SVHN.split_list
        return root, [(root / splits[s][1], splits[s][2]) for s in ("train", "test")], None
    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    folder = root / cls.base_folder
    files = [(folder / name, md5) for name, md5 in cls.train_list + cls.test_list]
    files.append((folder / cls.meta["filename"], cls.meta["md5"]))
    return folder, files, (root / cls.filename, cls.tgz_md5)


def diagnose(key: str, root: Path) -> str | None:
    """Why torchvision refused ``key`` under ``root`` when files are there: corrupt, incomplete or
    not extracted (one line, with the fix); ``None`` when none of its files is there at all."""
    from torchvision.datasets.utils import check_integrity

    pretty = _SOURCES[key].pretty
    folder, files, archive = _expected_files(key, root)
    present = [(path, md5) for path, md5 in files if path.is_file()]
    corrupt = [path.name for path, md5 in present if not check_integrity(str(path), md5)]
    missing = [path.name for path, _ in files if not path.is_file()]
    redo = "delete them and add --download to fetch them again, or copy intact files there"
    if corrupt:
        return f"{pretty} files under {str(folder)!r} are corrupt (md5 mismatch: {', '.join(corrupt)}); {redo}"
    if present:
        return f"{pretty} under {str(folder)!r} is incomplete (missing: {', '.join(missing)}); {redo}"
    if archive is None or not archive[0].is_file():
        return None
    if not check_integrity(str(archive[0]), archive[1]):
        return (f"{pretty} archive {str(archive[0])!r} is corrupt (md5 mismatch); "
                "delete it and add --download to fetch it again, or copy an intact archive there")
    return f"{pretty} archive {str(archive[0])!r} is not extracted; add --download to check and extract it (no network needed)"
