"""Datasets: digits splits, augmentation, image folders (both layouts) and the errors users hit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.data import augment_batch, load_dataset, stratified_split
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
