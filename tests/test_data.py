"""Datasets: digits splits, augmentation, image folders (both layouts) and the errors users hit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.data import (
    DATASETS, DatasetInfo, DatasetSpec, DatasetSplits, LoadOptions, RunDefaults, TensorSplit, augment_batch, carve_val,
    get_dataset, list_datasets, load_dataset, register_dataset, stratified_split,
)
from robustdistill.errors import DataError

CPU = torch.device("cpu")


def _all(split) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y, _ in split.batches(512, CPU):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_split_sizes_and_metadata(digits) -> None:
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1293, 144, 360)
    info = digits.info
    assert info.name == "digits" and info.num_classes == 10 and info.input_size == (1, 8, 8)
    assert info.class_names == tuple(str(d) for d in range(10))
    assert digits.default_eval_split == "test" and digits.whole is None
    assert digits.split("val") is digits.val
    with pytest.raises(DataError, match="unknown split 'all'"):
        digits.split("all")


def test_digits_splits_are_stratified_and_disjoint(digits) -> None:
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = digits.test.class_counts(10).numpy()
    pool_counts = totals - test_counts
    val_counts = digits.val.class_counts(10).numpy()
    # Every class is represented in proportion (within one sample of the exact share).
    assert np.all(np.abs(test_counts - 0.2 * totals) < 1 + 1e-9)
    assert np.all(np.abs(val_counts - 144 / 1437 * pool_counts) < 1 + 1e-9)
    assert np.array_equal(digits.train.class_counts(10).numpy() + val_counts, pool_counts)
    # Disjoint: no image of one split appears in another (the digits images are all distinct here).
    keys = {name: {x.numpy().tobytes() for x in _all(getattr(digits, name))[0]} for name in ("train", "val", "test")}
    assert len(keys["train"]) + len(keys["val"]) + len(keys["test"]) == 1797
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["val"]) and not (keys["val"] & keys["test"])


def test_digits_identical_on_every_call(digits) -> None:
    again = load_dataset("digits")
    for name in ("train", "val", "test"):
        a, b = getattr(digits, name), getattr(again, name)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert again.info == digits.info


def test_digits_pixel_range(digits) -> None:
    x, y = _all(digits.test)
    assert x.dtype == torch.float32 and x.shape == (360, 1, 8, 8)
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert torch.equal(y, digits.test.labels)
    mean, std = digits.info.mean[0], digits.info.std[0]
    assert 0 < mean < 1 and 0 < std < 1


def test_digits_val_size_is_exact() -> None:
    splits = load_dataset("digits", val_size=100)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1337, 100, 360)
    with pytest.raises(DataError, match="--val-size"):
        load_dataset("digits", val_size=5000)


def test_head_keeps_dataset_order(digits) -> None:
    head = digits.test.head(10)
    assert torch.equal(head.labels, digits.test.labels[:10])
    assert digits.test.head(None) is digits.test and digits.test.head(10_000) is digits.test
    _, _, idx = next(head.batches(4, CPU))
    assert idx.tolist() == [0, 1, 2, 3]


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(counts=st.lists(st.integers(1, 40), min_size=2, max_size=6), fraction=st.floats(0.05, 0.6), seed=st.integers(0, 5))
def test_stratified_split_exact_sizes(counts, fraction, seed) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    a, b = stratified_split(labels, [1 - fraction, fraction], seed=seed)
    n = len(labels)
    assert len(b) == math.ceil(fraction * n - 1e-6) and len(a) + len(b) == n
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(n))
    for c, count in enumerate(counts):
        # each class's share of the held-out part is the floor or the ceiling of its quota
        got = int(np.sum(labels[b] == c))
        assert math.floor(fraction * count) <= got <= math.ceil(fraction * count) + 1e-9
    again = stratified_split(labels, [1 - fraction, fraction], seed=seed)
    assert all(np.array_equal(p, q) for p, q in zip((a, b), again))


# --------------------------------------------------------------------------- augmentation
def test_augment_batch_shape_range_and_reproducibility() -> None:
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = augment_batch(x, 2, True, torch.Generator().manual_seed(7))
    b = augment_batch(x, 2, True, torch.Generator().manual_seed(7))
    c = augment_batch(x, 2, True, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, 0, False, torch.Generator()), x)


def test_augment_batch_is_a_crop_of_the_padded_image() -> None:
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    out = augment_batch(x, 2, False, torch.Generator().manual_seed(3))
    for i in range(x.shape[0]):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = augment_batch(x, 0, True, torch.Generator().manual_seed(3))
    kinds = [torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2)) for i in range(12)]
    assert all(kinds)
    assert any(not torch.equal(flipped[i], x[i]) for i in range(12))


# --------------------------------------------------------------------------- image folders
def test_imagefolder_class_folders_only(image_folder: Path, helpers) -> None:
    splits = load_dataset("imagefolder", image_folder)
    info = splits.info
    assert info.class_names == helpers.CIFAR10_CLASSES and info.num_classes == 10
    assert info.input_size == (3, 32, 32)
    assert splits.whole is not None and splits.default_eval_split == "all" and splits.split("all") is splits.whole
    assert len(splits.whole) == 60
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60
    files = {name: set(getattr(splits, name).files) for name in ("train", "val", "test")}
    assert not (files["train"] & files["test"]) and not (files["train"] & files["val"]) and not (files["val"] & files["test"])
    assert files["train"] | files["val"] | files["test"] == set(splits.whole.files)
    assert splits.notes  # says how the folder was split


def test_imagefolder_pixels_and_labels_match_the_files(image_folder: Path, helpers) -> None:
    whole = load_dataset("imagefolder", image_folder).whole
    x, y = _all(whole)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, helpers.load_folder_images(image_folder, whole.files))
    names = helpers.CIFAR10_CLASSES
    assert [names[int(label)] for label in y] == [Path(f).parent.name for f in whole.files]
    # The pool is shuffled once (fixed seed), so the first few examples span several classes.
    assert len(set(y[:12].tolist())) >= 4
    assert load_dataset("imagefolder", image_folder).whole.files == whole.files


def test_imagefolder_train_test_layout(split_folder: Path) -> None:
    splits = load_dataset("imagefolder", split_folder)
    assert splits.whole is None and splits.default_eval_split == "test"
    assert len(splits.test) == 9 and len(splits.train) + len(splits.val) == 15
    assert all("/test/" in f for f in splits.test.files)
    assert all("/train/" in f for f in splits.train.files + splits.val.files)
    assert splits.info.class_names == ("airplane", "automobile", "bird")
    with pytest.raises(DataError, match="use one of train, val, test"):
        splits.split("all")


def test_imagefolder_val_subfolder(tmp_path: Path, helpers) -> None:
    root = tmp_path / "with_val"
    classes = helpers.CIFAR10_CLASSES[:2]
    helpers.make_image_folder(root / "train", classes=classes, per_class=3)
    helpers.make_image_folder(root / "val", classes=classes, per_class=2, offset=3)
    helpers.make_image_folder(root / "test", classes=classes, per_class=2, offset=5)
    splits = load_dataset("imagefolder", root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 4, 4)
    assert all("/val/" in f for f in splits.val.files)


def test_imagefolder_mismatched_test_classes(tmp_path: Path, helpers) -> None:
    root = tmp_path / "mismatch"
    helpers.make_image_folder(root / "train", classes=("a", "b"), per_class=2)
    helpers.make_image_folder(root / "test", classes=("a", "c"), per_class=2)
    with pytest.raises(DataError, match="must match"):
        load_dataset("imagefolder", root)


def test_imagefolder_non_square_needs_image_size(tmp_path: Path, helpers) -> None:
    root = helpers.make_image_folder(tmp_path / "wide", classes=("a", "b"), per_class=2, size=(32, 24))
    with pytest.raises(DataError, match="not square.*--image-size"):
        load_dataset("imagefolder", root)
    splits = load_dataset("imagefolder", root, image_size=16)
    assert splits.info.input_size == (3, 16, 16)
    x, _ = _all(splits.whole)
    assert x.shape == (4, 3, 16, 16)


def test_imagefolder_grayscale(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("x", "y"):
        (tmp_path / "g" / cls).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((10, 10), 40 * k + (cls == "y") * 100, dtype=np.uint8), mode="L").save(tmp_path / "g" / cls / f"{k}.png")
    splits = load_dataset("imagefolder", tmp_path / "g")
    assert splits.info.input_size == (1, 10, 10) and len(splits.info.mean) == 1
    x, _ = _all(splits.whole)
    assert x.shape == (4, 1, 10, 10)


@pytest.mark.parametrize("layout", ["missing", "empty", "one-class", "no-images"])
def test_imagefolder_bad_layouts(tmp_path: Path, helpers, layout: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "one-class":
        helpers.make_image_folder(root, classes=("only",), per_class=2)
    if layout == "no-images":
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        load_dataset("imagefolder", root)
    assert "\n" not in str(exc.value) and str(root) in str(exc.value)


@pytest.mark.parametrize("size", [0, -8])
def test_imagefolder_image_size_must_be_positive(image_folder: Path, size: int) -> None:
    with pytest.raises(DataError, match=f"--image-size {size} must be a positive number of pixels"):
        load_dataset("imagefolder", image_folder, image_size=size)


def test_imagefolder_needs_data_dir() -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("imagefolder")


def test_unreadable_image(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset("imagefolder", tmp_path / "bad")


# --------------------------------------------------------------------------- torchvision datasets / names
@pytest.mark.parametrize(("name", "pretty"), [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("svhn", "SVHN")])
def test_missing_torchvision_dataset(tmp_path: Path, name: str, pretty: str, no_network) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset(name, tmp_path / "nothing-here")
    text = str(exc.value)
    assert "\n" not in text and pretty in text and "--download" in text and "--data-dir" in text


@pytest.mark.parametrize("name", ["CIFAR-10", "cifar_10", "Digits"])
def test_dataset_name_spellings(name: str, tmp_path: Path) -> None:
    try:
        splits = load_dataset(name, tmp_path)
    except DataError as exc:
        assert "CIFAR-10 not found" in str(exc)
    else:
        assert splits.info.name == "digits"


def test_unknown_dataset_lists_valid() -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("cifar11")
    text = str(exc.value)
    assert "did you mean 'cifar10'" in text
    for valid in ("digits", "cifar10", "cifar100", "svhn", "imagefolder"):
        assert valid in text


# --------------------------------------------------------------------------- image folder loader workers
def _worker_pids() -> set[int]:
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


def _pass(split, batch: int, order=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, idxs = zip(*split.batches(batch, CPU, order))
    return torch.cat(xs), torch.cat(ys), torch.cat(idxs)


def test_folder_workers_persist_across_passes_with_identical_results(image_folder: Path) -> None:
    whole = load_dataset("imagefolder", image_folder).whole  # 60 files: batches of 2 use loader workers
    reference = _pass(whole, 64)  # one batch: decoded in this process
    before = _worker_pids()
    orders = [torch.randperm(60, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    first = _pass(whole, 2, orders[0])
    workers = _worker_pids() - before
    assert workers  # still alive after the pass
    second = _pass(whole, 2, orders[1])
    assert _worker_pids() - before == workers  # the same processes served the second pass
    for order, (x, y, idx) in zip(orders, (first, second)):
        assert torch.equal(idx, order) and torch.equal(x, reference[0][order]) and torch.equal(y, reference[1][order])
    # Two interleaved passes over one split: the second gets a loader of its own, both stay exact.
    for (xa, ya, ia), (xb, yb, ib) in zip(whole.batches(2, CPU, orders[0]), whole.batches(2, CPU, orders[1])):
        assert torch.equal(xa, reference[0][ia]) and torch.equal(xb, reference[0][ib])
        assert torch.equal(ya, reference[1][ia]) and torch.equal(yb, reference[1][ib])
    whole.close()
    assert not (_worker_pids() & workers)


def test_folder_workers_stop_promptly_when_the_split_dies_in_a_cycle(image_folder: Path) -> None:
    import gc
    import time

    whole = load_dataset("imagefolder", image_folder).whole
    before = _worker_pids()
    _pass(whole, 2)
    workers = _worker_pids() - before
    assert workers
    cycle: dict = {"split": whole}
    cycle["self"] = cycle  # only the cyclic garbage collector can free the split now
    del whole, cycle
    start = time.perf_counter()
    gc.collect()
    # Were the loader freed with the cycle, its queues could be finalised first and each worker
    # would wait out a 5 s join timeout; freed by reference count it stops at once.
    assert time.perf_counter() - start < 2.5
    assert not (_worker_pids() & workers)


# --------------------------------------------------------------------------- registry
BUILTIN_NOTES = {
    "digits": "scikit-learn's bundled 8x8 digits, 10 classes, offline (1,293 train / 144 val / 360 test)",
    "cifar10": "torchvision CIFAR-10 from --data-dir (--download to fetch)",
    "cifar100": "torchvision CIFAR-100 from --data-dir (--download to fetch)",
    "svhn": "torchvision SVHN from --data-dir (--download to fetch)",
    "imagefolder": "--data-dir with train/ and test/ class folders, or just class folders",
}


def test_builtin_datasets_in_order_with_their_descriptions() -> None:
    assert [(s.name, s.description) for s in list_datasets()] == list(BUILTIN_NOTES.items())
    assert DATASETS.names() == list(BUILTIN_NOTES)


@pytest.mark.parametrize(("name", "defaults"), [
    ("digits", RunDefaults(0.2, 32, 40)), ("cifar10", RunDefaults(8 / 255, 128, None)),
    ("cifar100", RunDefaults(8 / 255, 128, None)), ("svhn", RunDefaults(8 / 255, 128, None)),
    ("imagefolder", RunDefaults(8 / 255, 128, None)),
])
def test_run_defaults(name: str, defaults: RunDefaults) -> None:
    assert get_dataset(name).defaults == defaults


@pytest.mark.parametrize(("name", "method", "epochs"), [
    ("digits", "iad", 20), ("digits", "ard", 40), ("digits", "rslad", 40), ("cifar10", "iad", 200),
    ("svhn", "ard", 200), ("cifar10", "rslad", 300),
])
def test_epochs_for_a_method(name: str, method: str, epochs: int) -> None:
    # What distill.resolve_config used before the registry: digits 40 epochs (IAD 20), elsewhere the
    # method's paper schedule (200; RSLAD 300).
    from robustdistill.methods import parse_method

    defaults = get_dataset(name).defaults
    assert parse_method(method).base.epochs_for(get_dataset(name).name, defaults.epochs) == epochs


@pytest.mark.parametrize(("name", "input_size", "num_classes", "first_class"), [
    ("digits", (1, 8, 8), 10, "0"), ("cifar10", (3, 32, 32), 10, "airplane"), ("cifar100", (3, 32, 32), 100, None),
    ("svhn", (3, 32, 32), 10, "0"), ("imagefolder", None, None, None),
])
def test_static_description(name: str, input_size, num_classes, first_class) -> None:
    spec = get_dataset(name)
    assert spec.input_size == input_size and spec.num_classes == num_classes
    assert (spec.class_names[0] if spec.class_names else None) == first_class


def test_static_description_matches_the_loaded_data(digits) -> None:
    spec = get_dataset("digits")
    assert (spec.input_size, spec.num_classes, spec.class_names) == (
        digits.info.input_size, digits.info.num_classes, digits.info.class_names)


def _load_toy(options: LoadOptions) -> DatasetSplits:
    """Two classes of 4x4 noise, told apart by their brightness."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 4, 4, generator=g) * 0.5 + 0.5 * labels[:, None, None, None]).float()
    train, val = carve_val(TensorSplit("train", images[:30], labels[:30]), options.val_size)
    info = DatasetInfo("toy", 2, (1, 4, 4), ("dark", "bright"), (0.5,), (0.3,))
    return DatasetSplits(info, train, val, TensorSplit("test", images[30:], labels[30:]))


def test_a_new_dataset_is_one_registration() -> None:
    spec = DatasetSpec("toy", "two classes of 4x4 noise", _load_toy, RunDefaults(0.1, 8, 3), aliases=("noise",),
                       channels=1, image_size=4, num_classes=2, class_names=("dark", "bright"))
    with DATASETS.temporarily(spec):
        assert get_dataset("To-Y") is spec and get_dataset("NOISE") is spec
        assert list_datasets()[-1] is spec
        splits = load_dataset("TOY", val_size=6)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
        x, y = _all(splits.test)
        assert x.shape == (10, 1, 4, 4) and torch.equal(y, torch.arange(30, 40) % 2)
    assert "toy" not in DATASETS and "toy" not in [s.name for s in list_datasets()]
    with pytest.raises(DataError, match="unknown dataset 'toy'"):
        load_dataset("toy")


def test_register_dataset_decorator_and_a_spec_the_data_contradicts() -> None:
    try:
        @register_dataset("toythree", description="claims three classes", defaults=RunDefaults(0.1, 8, None),
                          num_classes=3)
        def load_toythree(options: LoadOptions) -> DatasetSplits:
            return _load_toy(options)

        assert load_toythree is not None and get_dataset("toy_three").loader is load_toythree
        with pytest.raises(DataError, match="'toythree' declares classes 3 but its data has 2"):
            load_dataset("toythree")
    finally:
        DATASETS.unregister("toythree")
    assert "toythree" not in DATASETS


@pytest.mark.parametrize("bad", ["Toy", "toy-set", "toy_set"])
def test_registered_names_are_in_normal_form(bad: str) -> None:
    with pytest.raises(ValueError, match="lower case without - or _"):
        DatasetSpec(bad, "x", _load_toy, RunDefaults(0.1, 8, None))
    with pytest.raises(ValueError, match="lower case"):
        DatasetSpec("toy", "x", _load_toy, RunDefaults(0.1, 8, None), aliases=(bad,))


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        DATASETS.add(DatasetSpec("digits", "again", _load_toy, RunDefaults(0.1, 8, None)))
    assert get_dataset("digits").description == BUILTIN_NOTES["digits"]


def test_digits_are_exactly_scikit_learns() -> None:
    """The digits are read from scikit-learn's data file without importing scikit-learn: same arrays, bit for bit."""
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    from robustdistill.data.digits import digits_arrays

    images, target = digits_arrays()
    bunch = sklearn_digits()
    assert images.dtype == bunch.images.dtype and target.dtype == bunch.target.dtype
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
