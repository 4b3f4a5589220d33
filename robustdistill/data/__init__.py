"""Datasets as (train, val, test) splits of [0, 1] images, with the class names carried along.

Each dataset is a registered :class:`DatasetSpec` (see :mod:`robustdistill.data.spec`) that owns
its name, description, what it statically is, its loader and the run defaults it imposes
(:class:`RunDefaults`: eps, batch size, epochs). The built-ins, one module each:

* ``digits`` (:mod:`.digits`): scikit-learn's bundled 8x8 handwritten digits (1,797 real images,
  10 classes), always available offline. Fixed stratified split (seed 0): 1,293 train / 144 val / 360 test.
* ``cifar10``, ``cifar100``, ``svhn`` (:mod:`.torchvision_sets`): torchvision datasets read from
  ``--data-dir``; downloaded only with ``--download``.
* ``imagefolder`` (:mod:`.imagefolder`): a directory of class folders. With ``train/`` and ``test/``
  (optionally ``val/``) sub-directories those are the splits; otherwise the folder is one pool,
  split 90/10 train/test stratified (seed 0; validation carved from the 90) for training, and
  evaluated whole by ``evaluate`` (split ``all``).

The validation split is always carved from training data (stratified, fixed seed) and is what
model selection sees; the test split is only used for the final report. Adding a dataset is one
module with a ``@register_dataset`` loader, imported below.
"""

from __future__ import annotations

# Importing the built-in modules registers them, in this order (registration never depends on the user's imports).
from . import digits, torchvision_sets, imagefolder  # noqa: F401, E401  (registration)
from .augment import augment_batch
from .folder_split import FolderSplit
from .images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from .sampling import SPLIT_SEED, carve_val, stratified_split
from .spec import (
    DATASETS, DatasetSpec, LoadOptions, RunDefaults, add_dataset, get_dataset, list_datasets, load_dataset,
    normalise_name, register_dataset,
)
from .splits import DatasetInfo, DatasetSplits, Split, TensorSplit

__all__ = [
    "DATASETS", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "SPLIT_SEED", "DatasetInfo", "DatasetSpec", "DatasetSplits",
    "FolderSplit", "LoadOptions", "RunDefaults", "Split", "TensorSplit", "add_dataset", "augment_batch", "carve_val",
    "get_dataset", "list_datasets", "load_dataset", "normalise_name", "register_dataset", "stratified_split",
]
