"""Hostile data: every broken folder or file is refused by ``load_dataset`` (before any training could
start) with a one-line DataError naming it; damage only a full decode finds is named when read;
odd-but-valid images (16-bit, mixed grayscale and colour) are converted correctly.

All files are created for real in a temporary folder: PNGs written by Pillow or by hand (the
decompression bomb), truncated copies, a FIFO, a dangling symlink, and CIFAR/SVHN files whose md5
sums torchvision rejects.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from robustdistill.data import FolderSplit, load_dataset
from robustdistill.errors import DataError

CPU = torch.device("cpu")


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(seed: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 2, size: tuple[int, int] = (16, 16)) -> Path:
    for c, name in enumerate(classes):
        for k in range(per_class):
            _png(root / name / f"{k}.png", _rgb(10 * c + k, size))
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb(path: Path, side: int) -> Path:
    """A valid PNG header declaring side x side 8-bit grayscale pixels, in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1), 9)  # one row of data: the header is what matters
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- refused at load time
def _empty_class(root: Path) -> tuple[Path, list[str]]:
    (_folder(root) / "c").mkdir()
    return root, [str(root / "c"), "no images", "delete the folder"]


def _empty_class_in_test(root: Path) -> tuple[Path, list[str]]:
    _folder(root / "train")
    _folder(root / "test", per_class=1)
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    return root, [str(root / "test" / "b"), "no images"]


def _class_of_notes(root: Path) -> tuple[Path, list[str]]:
    _folder(root)
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("to do: add pictures")
    return root, [str(root / "c"), "notes.txt", "no images"]


def _bad_file(name: str, content: Callable[[Path], bytes]) -> Callable[[Path], tuple[Path, list[str]]]:
    def build(root: Path) -> tuple[Path, list[str]]:
        _folder(root)
        bad = root / "b" / name
        bad.write_bytes(content(root))
        return root, [str(bad), "cannot read image", "replace or delete"]

    return build


def _bomb_case(side: int) -> Callable[[Path], tuple[Path, list[str]]]:
    def build(root: Path) -> tuple[Path, list[str]]:
        _folder(root)
        bomb = _bomb(root / "a" / "bomb.png", side)
        return root, [str(bomb), f"{side}x{side}", "8192x8192", "decompression bomb"]

    return build


def _float_tiff(root: Path) -> tuple[Path, list[str]]:
    from PIL import Image

    _folder(root)
    Image.fromarray(np.ones((16, 16), dtype=np.float32)).save(root / "a" / "f.tif")
    return root, [str(root / "a" / "f.tif"), "floating-point", "8- or 16-bit"]


def _float_pfm(root: Path) -> tuple[Path, list[str]]:
    from PIL import Image

    _folder(root)
    Image.fromarray(np.ones((16, 16), dtype=np.float32)).save(root / "b" / "f.ppm")  # written as PFM
    return root, [str(root / "b" / "f.ppm"), "floating-point"]


def _one_non_square(root: Path) -> tuple[Path, list[str]]:
    _folder(root, per_class=3)
    odd = _png(root / "b" / "wide.png", _rgb(99, (12, 16)))
    return root, [str(odd), "16x12", "not square", "--image-size"]


def _one_other_size(root: Path) -> tuple[Path, list[str]]:
    _folder(root, per_class=3)
    odd = _png(root / "a" / "small.png", _rgb(99, (8, 8)))
    return root, [str(odd), "8x8", "16x16", "differ in size", "--image-size"]


def _other_size_in_test(root: Path) -> tuple[Path, list[str]]:
    _folder(root / "train")
    _folder(root / "test", per_class=1, size=(24, 24))
    return root, ["24x24", "16x16", str(root / "test"), "--image-size"]


def _single_class(root: Path) -> tuple[Path, list[str]]:
    _folder(root, classes=("only",))
    return root, [str(root), "one class folder", "'only'", "at least 2"]


def _no_images(root: Path) -> tuple[Path, list[str]]:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    return root, [str(root), "no images"]


def _loose_images(root: Path) -> tuple[Path, list[str]]:
    for k in range(3):
        _png(root / f"{k}.png", _rgb(k))
    return root, [str(root), "no class folders", "CLASS_NAME"]


def _data_dir_is_a_file(root: Path) -> tuple[Path, list[str]]:
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a folder")
    return root, [str(root), "is a file", "--data-dir"]


def _broken_symlink(root: Path) -> tuple[Path, list[str]]:
    _folder(root)
    link = root / "a" / "gone.png"
    link.symlink_to(root / "nowhere.png")
    return root, [str(link), "broken symbolic link"]


def _fifo(root: Path) -> tuple[Path, list[str]]:
    _folder(root)
    pipe = root / "b" / "pipe.png"
    os.mkfifo(pipe)  # opening it for reading would block forever
    return root, [str(pipe), "not a regular file"]


def _val_classes_differ(root: Path) -> tuple[Path, list[str]]:
    _folder(root / "train")
    _folder(root / "test")
    _folder(root / "val", classes=("a", "z"))
    return root, [str(root / "val"), "must match", "'z'"]


def _truncated_header(_root: Path) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"  # the signature, then the IHDR chunk cut short


REFUSED = {
    "empty class folder": _empty_class,
    "empty class folder in test/": _empty_class_in_test,
    "class folder of non-images": _class_of_notes,
    "random bytes as .png": _bad_file("noise.png", lambda _: np.random.default_rng(0).bytes(3000)),
    "empty .jpg": _bad_file("0.jpg", lambda _: b""),
    "html page saved as .jpg": _bad_file("page.jpg", lambda _: b"<!doctype html><html><body>404</body></html>"),
    "png header cut short": _bad_file("cut.png", _truncated_header),
    "15000x15000 png in a few bytes": _bomb_case(15000),
    "10000x10000 png (Pillow only warns)": _bomb_case(10000),
    "32-bit float tiff": _float_tiff,
    "32-bit float PFM as .ppm": _float_pfm,
    "one non-square image": _one_non_square,
    "one image of another size": _one_other_size,
    "test images of another size": _other_size_in_test,
    "single class": _single_class,
    "class folders without images": _no_images,
    "images without class folders": _loose_images,
    "data dir is a file": _data_dir_is_a_file,
    "dangling symlink": _broken_symlink,
    "fifo with an image suffix": _fifo,
    "val/ classes differ from train/": _val_classes_differ,
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_at_load_time(tmp_path: Path, case: str) -> None:
    from PIL import Image

    root, needles = REFUSED[case](tmp_path / "data")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as exc:
            load_dataset("imagefolder", root)
    # Our bound decides, below Pillow's: its DecompressionBombWarning never reaches the user.
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    text = str(exc.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def _permissions_bind(tmp_path: Path) -> bool:
    """Whether a mode-0 file is really unreadable here (root with CAP_DAC_OVERRIDE reads it anyway)."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        probe.read_text()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o644)
    return False


@pytest.mark.parametrize("what", ["class folder", "image file"])
def test_unreadable(tmp_path: Path, what: str) -> None:
    if not _permissions_bind(tmp_path):
        pytest.skip("this user reads files and folders regardless of their permissions (root)")
    root = _folder(tmp_path / "data")
    target = root / "b" if what == "class folder" else root / "b" / "0.png"
    target.chmod(0)
    try:
        with pytest.raises(DataError) as exc:
            load_dataset("imagefolder", root)
    finally:
        target.chmod(0o755)
    assert "\n" not in str(exc.value) and str(target) in str(exc.value)


# --------------------------------------------------------------------------- named when decoded
def _truncated_pixels(path: Path) -> None:
    data = _png(path, _rgb(7, (16, 16))).read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut


def _corrupt_pixels(path: Path) -> None:
    data = bytearray(_png(path, _rgb(7, (16, 16))).read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(40)  # zeroed compressed data: zlib fails, the header is fine
    path.write_bytes(bytes(data))


def _int32_out_of_range(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((16, 16), 70000, dtype=np.int32)).save(path)  # mode I: the header cannot tell


DAMAGED = {
    "truncated pixel data": (_truncated_pixels, ".png", "replace or delete"),
    "corrupt compressed data": (_corrupt_pixels, ".png", "replace or delete"),
    "32-bit integers over 65535": (_int32_out_of_range, ".tif", "outside 0..65535"),
}


@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "loader-workers"])
@pytest.mark.parametrize("damage", list(DAMAGED))
def test_damage_after_the_header_is_named_when_decoded(tmp_path: Path, damage: str, workers: bool) -> None:
    make, suffix, fix = DAMAGED[damage]
    root = _folder(tmp_path / "data", per_class=6)
    bad = root / "a" / f"9-damaged{suffix}"
    make(bad)
    whole = load_dataset("imagefolder", root).whole  # the header is fine: loading succeeds
    assert isinstance(whole, FolderSplit) and str(bad) in whole.files
    batch = 1 if workers else 64  # more than 4 batches -> DataLoader worker processes
    with pytest.raises(DataError) as exc:
        for _ in whole.batches(batch, CPU):
            pass
    text = str(exc.value)
    assert "\n" not in text and str(bad) in text and fix in text, text
    whole.close()


# --------------------------------------------------------------------------- converted correctly
SIXTEEN = np.array([[0, 257, 65535, 32768]] * 4, dtype=np.uint16)
EIGHT = np.array([[0, 1, 255, 128]] * 4, dtype=np.float32) / 255  # value / 257, rounded, in [0, 1]


def _save16(path: Path, kind: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":  # Pillow reads it as mode I;16
        Image.fromarray(SIXTEEN).save(path)
    elif kind == "tiff big-endian":  # mode I;16B
        Image.fromarray(SIXTEEN.astype(">u2")).save(path)
    else:  # 16-bit PGM: Pillow reads it as mode I
        path.write_bytes(b"P5 4 4 65535\n" + SIXTEEN.astype(">u2").tobytes())


@pytest.mark.parametrize(("kind", "suffix"), [("png", ".png"), ("tiff big-endian", ".tif"), ("pgm", ".pgm")])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, kind: str, suffix: str) -> None:
    root = tmp_path / "data"
    for name in ("a", "b"):
        for k in range(2):
            _save16(root / name / f"{k}{suffix}", kind)
    splits = load_dataset("imagefolder", root)
    assert splits.info.input_size == (1, 4, 4)
    x = torch.cat([x for x, _, _ in splits.whole.batches(8, CPU)])
    assert torch.equal(x, torch.from_numpy(EIGHT).expand(4, 1, 4, 4))


@pytest.mark.parametrize("gray_kind", ["8-bit", "16-bit"])
def test_mixed_grayscale_and_colour_make_three_channels(tmp_path: Path, gray_kind: str) -> None:
    from PIL import Image

    root = _folder(tmp_path / "data", size=(4, 4))
    gray = root / "a" / "9-gray.png"
    if gray_kind == "8-bit":
        Image.fromarray((EIGHT * 255).round().astype(np.uint8)).save(gray)
    else:
        _save16(gray, "png")
    splits = load_dataset("imagefolder", root)  # the first file in the shuffled order is colour or not:
    assert splits.info.input_size == (3, 4, 4)  # the decision is over every file
    assert any("1 grayscale and 4 colour" in note for note in splits.notes)
    x = torch.cat([x for x, _, _ in splits.whole.batches(8, CPU)])
    pos = splits.whole.files.index(str(gray))
    assert torch.equal(x[pos], torch.from_numpy(EIGHT).expand(3, 4, 4))


def test_all_files_decide_channels_whatever_comes_first(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "data"
    for c, name in enumerate(("a", "b")):
        for k in range(5):
            _png(root / name / f"{k}.png", np.full((4, 4), 20 * k + c, dtype=np.uint8))
    Image.fromarray(_rgb(1, (4, 4))).save(root / "b" / "colour.png")
    splits = load_dataset("imagefolder", root)
    assert splits.whole.files[0] != str(root / "b" / "colour.png")  # the colour file is not the first
    assert splits.info.input_size == (3, 4, 4)


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # AppleDouble junk
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "b" / ".ipynb_checkpoints").mkdir()
    (root / "b" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"junk")
    (root / ".cache").mkdir()
    splits = load_dataset("imagefolder", root)
    assert splits.info.class_names == ("a", "b") and len(splits.whole) == 4
    assert all("/." not in f for f in splits.whole.files)


# --------------------------------------------------------------------------- torchvision files
def _junk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not the file torchvision expects")


CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"]
TORCHVISION_CASES = {
    "cifar10 batches corrupt": ("cifar10", [f"cifar-10-batches-py/{f}" for f in CIFAR10_FILES],
                                ["CIFAR-10", "cifar-10-batches-py", "corrupt", "md5 mismatch", "data_batch_1", "--download"]),
    "cifar10 one batch there, corrupt": ("cifar10", ["cifar-10-batches-py/data_batch_3"],
                                         ["CIFAR-10", "corrupt", "md5 mismatch: data_batch_3", "--download"]),
    "cifar10 archive corrupt": ("cifar10", ["cifar-10-python.tar.gz"],
                                ["CIFAR-10", "cifar-10-python.tar.gz", "corrupt", "md5 mismatch", "--download"]),
    "cifar100 files corrupt": ("cifar100", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
                               ["CIFAR-100", "cifar-100-python", "md5 mismatch: train, test, meta", "--download"]),
    "cifar100 archive corrupt": ("cifar100", ["cifar-100-python.tar.gz"], ["CIFAR-100", "cifar-100-python.tar.gz", "md5 mismatch"]),
    "svhn train corrupt": ("svhn", ["train_32x32.mat"], ["SVHN", "md5 mismatch: train_32x32.mat", "--download"]),
}


@pytest.mark.parametrize("case", list(TORCHVISION_CASES))
def test_torchvision_files_there_but_corrupt(tmp_path: Path, case: str, no_network) -> None:
    name, files, needles = TORCHVISION_CASES[case]
    for f in files:
        _junk(tmp_path / f)
    with pytest.raises(DataError) as exc:
        load_dataset(name, tmp_path)
    text = str(exc.value)
    assert "\n" not in text and "not found" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def test_corrupt_archive_with_download_and_no_network(tmp_path: Path, no_network) -> None:
    _junk(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path, download=True)
    text = str(exc.value)
    assert "\n" not in text and "could not download CIFAR-10" in text and "--data-dir" in text
