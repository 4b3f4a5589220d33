"""``digits``: scikit-learn's bundled 8x8 handwritten digits, always available offline.

1,797 real images, 10 classes. Fixed stratified split (seed 0): 1,293 train / 144 val / 360 test.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .sampling import carve_val, stratified_split
from .spec import LoadOptions, RunDefaults, register_dataset
from .splits import DatasetInfo, DatasetSplits, TensorSplit

# The default run must finish in minutes on a laptop CPU. eps 0.2: the budget the bundled digits
# teacher was trained and evaluated at. Batches of 32 give 41 SGD steps per epoch on 1,293 images
# (128 would give 11, too few for attacked training from scratch; benchmarks/results/tuning.md).
# 40 epochs (IAD sets 20 for itself, robustdistill/methods/iad.py). All chosen on the validation split.
DIGITS_DEFAULTS = RunDefaults(eps=0.2, batch_size=32, epochs=40)

@register_dataset(
    "digits", description="scikit-learn's bundled 8x8 digits, 10 classes, offline (1,293 train / 144 val / 360 test)",
    defaults=DIGITS_DEFAULTS, channels=1, image_size=8, num_classes=10, class_names=tuple(str(d) for d in range(10)),
)
def load_digits(options: LoadOptions) -> DatasetSplits:
    """scikit-learn's 8x8 digits scaled to [0, 1]; ``data_dir``, ``download`` and ``image_size`` do not apply."""
    pixels, target = digits_arrays()
    images = torch.from_numpy((pixels / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(target.astype(np.int64))
    pool, test = stratified_split(target, [0.8, 0.2])
    train_pool = TensorSplit("train", images[pool], labels[pool])
    train, val = carve_val(train_pool, options.val_size)
    mean = float(images[pool].mean())
    std = float(images[pool].std())
    info = DatasetInfo(
        "digits", 10, (1, 8, 8), tuple(str(d) for d in range(10)), (round(mean, 4),), (round(std, 4),),
        crop_padding=1, flip=False,
    )
    return DatasetSplits(info, train, val, TensorSplit("test", images[test], labels[test]))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8), target (1797,))``: exactly ``sklearn.datasets.load_digits()``'s arrays.

    Read straight from the data file scikit-learn ships, the way its loader reads it, because importing
    scikit-learn costs more than a second of the default job's start; if the file is not where it has
    always been, scikit-learn's own loader is used.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.images, bunch.target
    with gzip.open(path, mode="rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
