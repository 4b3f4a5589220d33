"""``digits``: scikit-learn's bundled 8x8 handwritten digits, always available offline.

1,797 real images, 10 classes. Fixed stratified split (seed 0): 1,293 train / 144 val / 360 test.
"""

from __future__ import annotations

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
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    pool, test = stratified_split(bunch.target, [0.8, 0.2])
    train_pool = TensorSplit("train", images[pool], labels[pool])
    train, val = carve_val(train_pool, options.val_size)
    mean = float(images[pool].mean())
    std = float(images[pool].std())
    info = DatasetInfo(
        "digits", 10, (1, 8, 8), tuple(str(d) for d in range(10)), (round(mean, 4),), (round(std, 4),),
        crop_padding=1, flip=False,
    )
    return DatasetSplits(info, train, val, TensorSplit("test", images[test], labels[test]))
