"""A split of image files decoded on the fly by DataLoader workers that persist across passes."""

from __future__ import annotations

import os
import weakref
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .images import read_image
from .splits import Batch, Split


class FolderSplit(Split):
    """Image files decoded on the fly by DataLoader workers (for datasets too large for memory).

    The DataLoader for a given batch size is built once and reused by every later pass over the
    split, with its workers kept alive (``persistent_workers``): a training run no longer starts
    and stops a pool of worker processes every epoch. Only the order differs between passes, and
    it is read in the main process, so a pass yields exactly what a fresh loader would. A pass that
    starts while another one over the same split is still running (two interleaved iterators) gets
    a loader of its own, since a persistent loader can serve only one pass at a time.
    :meth:`close` stops the workers; they also stop as soon as the split is garbage-collected.
    """

    def __init__(self, name: str, files: Sequence[str], labels: torch.Tensor, image_size: int, channels: int) -> None:
        self.name, self.files, self.labels = name, list(files), labels.long()
        self.image_size, self.channels = image_size, channels
        weakref.finalize(self, _drop_loaders, id(self)).atexit = False

    def subset(self, indices: torch.Tensor) -> "FolderSplit":
        files = [self.files[i] for i in indices.tolist()]
        return FolderSplit(self.name, files, self.labels[indices], self.image_size, self.channels)

    def close(self) -> None:
        """Stop this split's loader workers (a pass still running keeps its workers until it ends)."""
        _drop_loaders(id(self), wait_for_passes=True)

    def batches(self, batch_size: int, device: torch.device, order: torch.Tensor | None = None) -> Iterator[Batch]:
        order = torch.arange(len(self)) if order is None else order
        workers = min(8, os.cpu_count() or 1) if len(order) > 4 * batch_size else 0
        loader = self._loader(batch_size, workers, device.type == "cuda")
        loader.start(order.tolist())
        try:
            start = 0
            for x, y in loader.loader:
                idx = order[start : start + x.shape[0]]
                start += x.shape[0]
                failed = y < 0
                if bool(failed.any()):
                    self._raise_decode_error(int(idx[failed][0]))
                yield x.to(device, non_blocking=True).float().div_(255.0), y.to(device, non_blocking=True), idx
        finally:
            loader.finish()
            # A traceback keeps this frame's locals alive: it must not keep the loader (see _PERSISTENT).
            del loader

    def _loader(self, batch_size: int, workers: int, pin: bool) -> "_Loader":
        dataset = _FileDataset(self.files, self.labels, self.image_size, self.channels)
        if workers == 0:  # decoding in this process: nothing to keep alive
            return _Loader(dataset, batch_size, 0, pin)
        key = (id(self), batch_size, workers, pin)
        cached = _PERSISTENT.get(key)
        if cached is None:
            cached = _PERSISTENT[key] = _Loader(dataset, batch_size, workers, pin, key=key)
        elif cached.busy:
            return _Loader(dataset, batch_size, workers, pin)
        return cached

    def _raise_decode_error(self, index: int) -> None:
        # A worker marked this file as undecodable; decoding it here raises the one-line DataError
        # (an exception raised inside a worker would arrive wrapped in a multi-line traceback).
        path = self.files[index]
        read_image(path, self.image_size, self.channels)
        raise DataError(f"cannot decode image {path!r} in a data-loading worker; check the file and run again")


# Persistent loaders live here, keyed by (id(split), batch size, workers, pinning), and nowhere
# else once a pass is over. Were they reachable only from garbage (a split, or a frame kept by an
# exception's traceback, dying in a reference cycle), the cyclic garbage collector could finalise a
# loader's multiprocessing queues before the loader's own shutdown runs: the stop signal would
# never reach the workers, each costing a 5 s join timeout at some random later moment. Dropping
# them from here instead - when the split is collected (weakref finaliser), on close(), or when a
# closed loader's pass ends - shuts them down at once, by reference count, with intact queues.
_PERSISTENT: dict[tuple[int, int, int, bool], "_Loader"] = {}


def _drop_loaders(split_id: int, wait_for_passes: bool = False) -> None:
    for key in [k for k in _PERSISTENT if k[0] == split_id]:
        if wait_for_passes and _PERSISTENT[key].busy:
            _PERSISTENT[key].closing = True
        else:
            del _PERSISTENT[key]


class _OrderSampler(Sampler[int]):
    """Indices in an order set before each pass (a persistent loader keeps its sampler object)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class _Loader:
    """One DataLoader and the sampler whose order it follows; ``busy`` while a pass is running.

    With ``key`` it is a persistent loader registered in ``_PERSISTENT`` under that key.
    """

    def __init__(self, dataset: "_FileDataset", batch_size: int, workers: int, pin: bool,
                 key: tuple[int, int, int, bool] | None = None) -> None:
        self.sampler = _OrderSampler()
        self.key, self.busy, self.closing = key, False, False
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=pin, persistent_workers=key is not None,
        )

    def start(self, order: list[int]) -> None:
        self.busy = True
        self.sampler.order = order

    def finish(self) -> None:
        self.busy = False
        if self.closing and self.key is not None:
            _PERSISTENT.pop(self.key, None)


class _FileDataset(Dataset):
    def __init__(self, files: list[str], labels: torch.Tensor, size: int, channels: int) -> None:
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return read_image(self.files[i], self.size, self.channels), self.labels[i]
        except DataError:
            # Label -1 marks the file as undecodable; the main process names it (see _raise_decode_error).
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), torch.tensor(-1)
