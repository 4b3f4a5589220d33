"""What a loaded dataset is: its description (:class:`DatasetInfo`) and its splits of [0, 1] images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import DataError
from ..models import DataHint

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shape, classes, normalisation statistics and training augmentation.

    Attributes:
        name: the registered dataset name (``digits``, ``cifar10``, ...).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        input_size: ``(channels, height, width)`` of every image as batches yield it.
        class_names: one name per label.
        mean, std: per-channel statistics of the [0, 1] pixels, for a model's normalisation layer.
        crop_padding: zero padding of the random-crop augmentation (0 = no crop).
        flip: whether training flips images horizontally at random.
    """

    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False

    def hint(self) -> DataHint:
        """The shape, classes and statistics a model built for this data needs."""
        return DataHint(self.num_classes, self.input_size, self.class_names, self.mean, self.std)


class Split:
    """A split of labelled images. ``labels`` is known up front so per-class counts are exact."""

    name: str
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Examples per class, as a length-``num_classes`` tensor."""
        return torch.bincount(self.labels, minlength=num_classes)

    def head(self, n: int | None) -> "Split":
        """The first ``n`` examples in dataset order (RobustBench convention: no shuffling)."""
        if n is None or n >= len(self):
            return self
        return self.subset(torch.arange(n))

    def subset(self, indices: torch.Tensor) -> "Split":
        """The examples at ``indices``, in that order, as a split of the same kind."""
        raise NotImplementedError

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None) -> Iterator[Batch]:
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

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None) -> Iterator[Batch]:
        images, labels = self._on(device)
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            idx_dev = idx.to(device)
            x = images.index_select(0, idx_dev)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            yield x, labels.index_select(0, idx_dev), idx


@dataclass
class DatasetSplits:
    """Train / val / test splits; ``whole`` is the entire pool of an image folder without splits.

    ``notes`` are one-line remarks a run report should carry (how a folder was split, how mixed
    grayscale and colour files were combined, ...).
    """

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    notes: list[str] = field(default_factory=list)
    whole: Split | None = None

    def split(self, name: str) -> Split:
        """The split called ``name``: ``train``, ``val``, ``test``, or ``all`` when ``whole`` exists."""
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
