"""The dataset registry: one frozen :class:`DatasetSpec` per dataset, owning its run defaults.

A dataset is added by one module that registers a loader::

    @register_dataset("mydata", description="...", defaults=RunDefaults(eps=8 / 255, batch_size=128, epochs=None),
                      channels=3, image_size=32, num_classes=10)
    def load_mydata(options: LoadOptions) -> DatasetSplits: ...

Names are looked up ignoring case, ``-`` and ``_`` (``CIFAR-10`` and ``cifar_10`` are ``cifar10``),
so registered names and aliases are written in that normal form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError, did_you_mean
from ..registry import Registry
from .splits import DatasetInfo, DatasetSplits


@dataclass(frozen=True)
class RunDefaults:
    """What a run on a dataset uses when the user does not say.

    Attributes:
        eps: L-inf budget in [0, 1] pixel units (attacks in training and evaluation).
        batch_size: training batch size.
        epochs: training epochs, or ``None`` for the method's own (paper) schedule. A method may
            set its own length for a dataset (``MethodSpec.dataset_epochs``), which wins.
    """

    eps: float
    batch_size: int
    epochs: int | None


@dataclass(frozen=True)
class LoadOptions:
    """What a loader is asked for (``load_dataset``'s arguments).

    Attributes:
        data_dir: where the files are (``None``: the loader's default, or an error if it needs one).
        download: whether a loader that can download may do so.
        image_size: resize every image to ``image_size`` x ``image_size`` (image folders).
        val_size: examples in the validation split carved from training data (``None``: the default).
    """

    data_dir: Path | None = None
    download: bool = False
    image_size: int | None = None
    val_size: int | None = None


Loader = Callable[[LoadOptions], DatasetSplits]


def normalise_name(name: str) -> str:
    """``name`` as looked up: lower case, without ``-`` and ``_``."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its name, what it statically is, how to load it and its run defaults.

    Attributes:
        name: registry name, in normal form (see :func:`normalise_name`).
        description: one line for ``robustdistill list datasets``.
        loader: ``LoadOptions -> DatasetSplits``.
        defaults: the eps, batch size and epochs a run on this dataset uses unless told otherwise.
        aliases: other names (normal form) it answers to.
        channels, image_size, num_classes, class_names: what is known without reading the data;
            ``None`` where only the data tells (an image folder). A loaded dataset must agree.
    """

    name: str
    description: str
    loader: Loader
    defaults: RunDefaults
    aliases: tuple[str, ...] = ()
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases):
            if name != normalise_name(name):
                raise ValueError(f"dataset name {name!r} must be lower case without - or _ "
                                 f"(lookups ignore them), e.g. {normalise_name(name)!r}")
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def input_size(self) -> tuple[int, int, int] | None:
        """``(channels, size, size)`` when both are known statically, else ``None``."""
        if self.channels is None or self.image_size is None:
            return None
        return (self.channels, self.image_size, self.image_size)

    def load(self, data_dir: str | Path | None = None, *, download: bool = False,
             image_size: int | None = None, val_size: int | None = None) -> DatasetSplits:
        """Load the dataset (see :func:`load_dataset`) and check it is what the spec declares."""
        options = LoadOptions(Path(data_dir) if data_dir is not None else None, download, image_size, val_size)
        splits = self.loader(options)
        self._check(splits.info)
        return splits

    def _check(self, info: DatasetInfo) -> None:
        size = None if self.image_size is None else (self.image_size, self.image_size)
        for what, static, loaded in (
            ("classes", self.num_classes, info.num_classes), ("class names", self.class_names, info.class_names),
            ("channels", self.channels, info.input_size[0]), ("image size", size, tuple(info.input_size[1:])),
        ):
            if static is not None and static != loaded:
                raise DataError(f"dataset {self.name!r} declares {what} {static} but its data has {loaded}; "
                                "check the files, or fix the dataset's registration")


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def add_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a ready :class:`DatasetSpec` (with its aliases); a name may be registered once."""
    return DATASETS.add(spec, aliases=spec.aliases)


def register_dataset(
    name: str, *, description: str, defaults: RunDefaults, aliases: tuple[str, ...] = (), channels: int | None = None,
    image_size: int | None = None, num_classes: int | None = None, class_names: tuple[str, ...] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader function as the dataset ``name`` (arguments: see :class:`DatasetSpec`).

    Returns:
        A decorator that registers the loader and returns it unchanged.
    """

    def decorate(loader: Loader) -> Loader:
        add_dataset(DatasetSpec(name, description, loader, defaults, tuple(aliases), channels, image_size,
                                num_classes, tuple(class_names) if class_names is not None else None))
        return loader

    return decorate


def get_dataset(name: str) -> DatasetSpec:
    """The dataset called ``name`` or one of its aliases, ignoring case, ``-`` and ``_``.

    Raises:
        DataError: no such dataset (the message lists the registered ones).
    """
    key = normalise_name(name)
    for spec in DATASETS:
        if key == spec.name or key in spec.aliases:
            return spec
    raise DataError(did_you_mean(name, DATASETS.names(), "dataset"))


def list_datasets() -> list[DatasetSpec]:
    """Every registered dataset, in registration order (the built-ins first)."""
    return list(DATASETS)


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = False,
    image_size: int | None = None, val_size: int | None = None,
) -> DatasetSplits:
    """Load the dataset ``name`` as train/val/test splits of [0, 1] images.

    Every check of the files happens here, before any training could start: missing, corrupt or
    inconsistent data is a :class:`DataError` naming the file or folder and the fix.

    Args:
        name: a registered dataset (``digits``, ``cifar10``, ``cifar100``, ``svhn``, ``imagefolder``, ...).
        data_dir: where its files are (torchvision datasets: default ``data``; image folders: required).
        download: let torchvision datasets download missing files.
        image_size: resize every image of an image folder to this square size.
        val_size: examples in the validation split carved from training data.
    """
    return get_dataset(name).load(data_dir, download=download, image_size=image_size, val_size=val_size)
