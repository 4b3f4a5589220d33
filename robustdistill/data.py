"""Datasets as (train, val, test) splits of [0, 1] images, with the class names carried along.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes),
  always available offline. Fixed stratified split (seed 0): 1,293 train / 144 val / 360 test.
* ``cifar10``, ``cifar100``, ``svhn``: torchvision datasets read from ``--data-dir``; downloaded
  only with ``--download``.
* ``imagefolder``: a directory of class folders. With ``train/`` and ``test/`` (optionally
  ``val/``) sub-directories those are the splits; otherwise the folder is one pool, split
  90/10 train/test stratified (seed 0; validation carved from the 90) for training, and evaluated
  whole by ``evaluate`` (split ``all``).

The validation split is always carved from training data (stratified, fixed seed) and is what
model selection sees; the test split is only used for the final report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import DataError, did_you_mean
from .models.sources import DataHint

SPLIT_SEED = 0
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shape, classes, normalisation statistics and training augmentation."""

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False

    def hint(self) -> DataHint:
        return DataHint(self.num_classes, self.input_size, self.class_names, self.mean, self.std)


# --------------------------------------------------------------------------- splits
class Split:
    """A split of labelled images. ``labels`` is known up front so per-class counts are exact."""

    name: str
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)

    def head(self, n: int | None) -> "Split":
        """The first ``n`` examples in dataset order (RobustBench convention: no shuffling)."""
        if n is None or n >= len(self):
            return self
        return self.subset(torch.arange(n))

    def subset(self, indices: torch.Tensor) -> "Split":
        raise NotImplementedError

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y, idx)`` with ``x`` float32 in [0, 1] on ``device``, in ``order`` (default: dataset order)."""
        raise NotImplementedError


class TensorSplit(Split):
    """Images held in memory (uint8 in [0, 255] or float in [0, 1]); batches are sliced, not loaded."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.name, self.images, self.labels = name, images, labels.long()
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def subset(self, indices: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.name, self.images[indices], self.labels[indices])

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Small datasets live on the device once; batches are then just index operations.
        if device not in self._cache:
            self._cache[device] = (self.images.to(device), self.labels.to(device))
        return self._cache[device]

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None):
        images, labels = self._on(device)
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            idx_dev = idx.to(device)
            x = images.index_select(0, idx_dev)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            yield x, labels.index_select(0, idx_dev), idx


class FolderSplit(Split):
    """Image files decoded on the fly by DataLoader workers (for datasets too large for memory)."""

    def __init__(self, name: str, files: Sequence[str], labels: torch.Tensor, image_size: int, channels: int) -> None:
        self.name, self.files, self.labels = name, list(files), labels.long()
        self.image_size, self.channels = image_size, channels

    def subset(self, indices: torch.Tensor) -> "FolderSplit":
        return FolderSplit(self.name, [self.files[i] for i in indices.tolist()], self.labels[indices], self.image_size, self.channels)

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None):
        from torch.utils.data import DataLoader

        order = torch.arange(len(self)) if order is None else order
        dataset = _FileDataset(self.files, self.labels, self.image_size, self.channels)
        workers = min(8, os.cpu_count() or 1) if len(order) > 4 * batch_size else 0
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=False,
        )
        start = 0
        for x, y in loader:
            idx = order[start : start + x.shape[0]]
            start += x.shape[0]
            yield x.to(device, non_blocking=True).float().div_(255.0), y.to(device, non_blocking=True), idx


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[str], labels: torch.Tensor, size: int, channels: int) -> None:
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_image(self.files[i], self.size, self.channels), self.labels[i]


def _read_image(path: str, size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@dataclass
class DatasetSplits:
    """Train / val / test splits; ``whole`` is the entire pool of an image folder without splits."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    notes: list[str] = field(default_factory=list)
    whole: Split | None = None

    def split(self, name: str) -> Split:
        if name in ("train", "val", "test"):
            return getattr(self, name)
        if name == "all" and self.whole is not None:
            return self.whole
        valid = "train, val, test" + (", all" if self.whole is not None else "")
        raise DataError(f"unknown split {name!r} for {self.info.name}; use one of {valid}")

    @property
    def default_eval_split(self) -> str:
        """``test``, or ``all`` for an image folder without predefined splits."""
        return "all" if self.whole is not None else "test"


# --------------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip, on whatever device ``x`` lives.

    Offsets and flips are drawn on the CPU from ``generator`` so a run is reproducible on any device.
    """
    n, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


# --------------------------------------------------------------------------- splitting
def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split indices per class into parts of the given fractions, with exact part sizes.

    Every part after the first holds ``ceil(f * N)`` samples (scikit-learn's convention for a
    held-out part) and the first takes the rest. Each part's size is shared over the classes by
    largest remainder, so the totals are exact (rounding class by class would drift) and the
    classes stay as balanced as the counts allow.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    alloc = np.zeros((len(fractions), len(classes)), dtype=np.int64)
    for j, f in enumerate(fractions[1:], start=1):
        quota = f * counts
        base = np.floor(quota + 1e-9).astype(np.int64)
        extra = math.ceil(f * len(labels) - 1e-6) - int(base.sum())
        order = np.argsort(-(quota - base), kind="stable")  # largest remainder first; ties -> lowest class
        base[order[: max(0, extra)]] += 1
        alloc[j] = np.minimum(base, counts - alloc[1:j].sum(0))
    alloc[0] = counts - alloc[1:].sum(0)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        for part, chunk in zip(parts, np.split(idx, np.cumsum(alloc[:-1, k]))):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _carve_val(train: TensorSplit | FolderSplit, val_size: int | None) -> tuple[Split, Split]:
    n = len(train)
    n_val = val_size if val_size is not None else min(1000, max(1, round(0.1 * n)))
    if not 0 < n_val < n:
        raise DataError(f"--val-size {n_val} must be between 1 and {n - 1} for a training split of {n}")
    labels = train.labels.numpy()
    rest, val = stratified_split(labels, [1 - n_val / n, n_val / n])
    return train.subset(torch.from_numpy(rest)), _renamed(train.subset(torch.from_numpy(val)), "val")


def _renamed(split: Split, name: str) -> Split:
    split.name = name
    return split


# --------------------------------------------------------------------------- datasets
DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder")


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = False,
    image_size: int | None = None, val_size: int | None = None,
) -> DatasetSplits:
    """Load ``name`` as train/val/test splits of [0, 1] images (see the module docstring)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return _digits(val_size)
    if key in ("cifar10", "cifar100", "svhn"):
        return _torchvision(key, Path(data_dir or "data"), download, val_size)
    if key == "imagefolder":
        if data_dir is None:
            raise DataError("--dataset imagefolder needs --data-dir pointing at a folder of class folders")
        return _imagefolder(Path(data_dir), image_size, val_size)
    raise DataError(did_you_mean(name, DATASETS, "dataset"))


def _digits(val_size: int | None) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    pool, test = stratified_split(bunch.target, [0.8, 0.2])
    train_pool = TensorSplit("train", images[pool], labels[pool])
    train, val = _carve_val(train_pool, val_size)
    mean = float(images[pool].mean())
    std = float(images[pool].std())
    info = DatasetInfo(
        "digits", 10, (1, 8, 8), tuple(str(d) for d in range(10)), (round(mean, 4),), (round(std, 4),),
        crop_padding=1, flip=False,
    )
    return DatasetSplits(info, train, val, TensorSplit("test", images[test], labels[test]))


def _torchvision(key: str, root: Path, download: bool, val_size: int | None) -> DatasetSplits:
    import torchvision

    pretty = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}[key]
    try:
        if key == "svhn":
            train_ds = torchvision.datasets.SVHN(str(root), split="train", download=download)
            test_ds = torchvision.datasets.SVHN(str(root), split="test", download=download)
            to_split = lambda ds, n: TensorSplit(n, torch.from_numpy(ds.data), torch.from_numpy(np.asarray(ds.labels)))  # noqa: E731
            classes = tuple(str(d) for d in range(10))
        else:
            cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
            train_ds = cls(str(root), train=True, download=download)
            test_ds = cls(str(root), train=False, download=download)
            to_split = lambda ds, n: TensorSplit(n, torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))  # noqa: E731
            classes = tuple(train_ds.classes)
    except RuntimeError as exc:
        if "not found" in str(exc).lower() or "corrupted" in str(exc).lower():
            raise DataError(
                f"{pretty} not found under {str(root)!r}; pass --data-dir to where it is, or add --download to fetch it"
            ) from None
        raise DataError(f"could not read {pretty} from {str(root)!r}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise DataError(f"could not download {pretty} into {str(root)!r} ({exc}); download it elsewhere and pass --data-dir") from None
    mean, std = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD), "svhn": (SVHN_MEAN, SVHN_STD)}[key]
    train, val = _carve_val(to_split(train_ds, "train"), val_size)
    info = DatasetInfo(key, len(classes), (3, 32, 32), classes, mean, std, crop_padding=4 if key != "svhn" else 2, flip=key != "svhn")
    return DatasetSplits(info, train, val, to_split(test_ds, "test"))


def _scan_classes(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Class folders in sorted order; files in a fixed shuffled order (seed 0), so that the first N
    examples of a split - what ``--n-examples`` evaluates - cover every class rather than only the first."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                labels.append(label)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    return classes, [files[i] for i in order], [labels[i] for i in order]


def _imagefolder(root: Path, image_size: int | None, val_size: int | None) -> DatasetSplits:
    if not root.is_dir():
        raise DataError(f"imagefolder {str(root)!r} does not exist; pass --data-dir to a folder of class folders")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if has_splits else root
    classes, files, labels = _scan_classes(base)
    if len(classes) < 2 or not files:
        raise DataError(f"{str(base)!r} holds no class folders with images; expected {base}/CLASS_NAME/*.png")
    size, channels = _probe_images(files, image_size)
    make = lambda n, f, l: FolderSplit(n, f, torch.tensor(l, dtype=torch.long), size, channels)  # noqa: E731
    notes = []
    if has_splits:
        pool = make("train", files, labels)
        test_classes, test_files, test_labels = _scan_classes(root / "test")
        if test_classes != classes:
            raise DataError(f"{root}/test has classes {test_classes[:5]}... but {root}/train has {classes[:5]}...; they must match")
        test = make("test", test_files, test_labels)
        if (root / "val").is_dir():
            _, val_files, val_labels = _scan_classes(root / "val")
            train, val = pool, make("val", val_files, val_labels)
        else:
            train, val = _carve_val(pool, val_size)
        everything = None
    else:
        everything = make("all", files, labels)
        tr, te = stratified_split(np.asarray(labels), [0.9, 0.1])
        train, val = _carve_val(everything.subset(torch.from_numpy(tr)), val_size)
        test = _renamed(everything.subset(torch.from_numpy(te)), "test")
        notes.append("no train/test sub-folders: training uses a fixed stratified 90/10 train/test split of the folder "
                     "(validation carved from the 90)")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    info = DatasetInfo(
        "imagefolder", len(classes), (channels, size, size), tuple(classes), mean, std,
        crop_padding=max(1, size // 8), flip=True,
    )
    return DatasetSplits(info, train, val, test, notes, whole=everything)


def _probe_images(files: list[str], image_size: int | None) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(files[0]) as img:
            w, h = img.size
            channels = 1 if img.mode in ("L", "1", "I;16", "I") else 3
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {files[0]!r} ({exc})") from None
    if image_size is None and w != h:
        raise DataError(f"images are {w}x{h}, not square; pass --image-size N to resize them to NxN")
    return int(image_size or w), channels
