"""Office-31, Office-Home, VisDA-2017 and DomainNet read from their folders as distributed.

Each dataset is a folder of the data dir (:mod:`da_framework.data.local`'s layout; the first of
the listed folder names that exists is used) and each of its domains a registered domain
``<dataset>/<domain>``, read by :mod:`da_framework.data.image_folder` (lazy decoding, grain
workers, 256 -> 224 by default; ``<dataset>/<domain>@<crop>`` for another crop).  Labels follow
tllib's class lists (:mod:`da_framework.data.image_classes`).  An image list, where present,
wins over scanning class folders (it is what tllib and the published numbers use)::

    office31/  (or Office31)                                   office31/amazon, /dslr, /webcam
        amazon/images/<class>/<image>.jpg                      as distributed (Saenko et al.)
        image_list/amazon.txt                                  tllib's lists: 'amazon/images/<class>/<file> <label>'
    office_home/  (or OfficeHome, OfficeHomeDataset_10072016)  office_home/Art, /Clipart, /Product, /Real_World
        Art/<class>/<image>.jpg                                'Real_World' may be spelt 'Real World'
        image_list/Art.txt                                     tllib's lists, paths relative to office_home/
    visda2017/  (or VisDA2017, visda-2017)                     visda2017/train (synthetic), /validation (real)
        train/<class>/.../<image>.png                          as distributed
        train/image_list.txt                                   the official list, paths relative to train/
        image_list/train.txt                                   tllib's lists, paths relative to visda2017/
    domainnet/  (or domain_net, DomainNet)                     domainnet/clipart, /infograph, /painting, ...
        clipart/<class>/<image>.jpg
        clipart_train.txt, clipart_test.txt                    the official split lists, relative to domainnet/
        (or image_list/clipart_train.txt ...)                  (tllib's place for them)

Splits.  Office-31, Office-Home and VisDA-2017 have no official split: ``train`` (random resized
crop + flip) and ``val``/``test`` (centre crop) hold every image of the domain, the protocol of
tllib and of the published unsupervised-DA tables (the target's unlabelled training images are
its test images; ``source_val_accuracy`` is then the accuracy on the source's own training
images).  DomainNet: ``train`` = ``<domain>_train.txt``, ``val`` = ``test`` = ``<domain>_test.txt``
(tllib's choice); without the lists, every image of ``<domain>/<class>/`` in all three (DomainBed's).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from da_framework.data.catalog import resolve_data_dir
from da_framework.data.domain import Domain, DomainError
from da_framework.data.image_classes import DOMAINNET_CLASSES, OFFICE31_CLASSES, OFFICE_HOME_CLASSES, VISDA2017_CLASSES
from da_framework.data.image_folder import (
    ImageList,
    ImageTransform,
    make_image_domain,
    not_prepared,
    read_image_list,
    scan_image_folder,
    split_size,
)
from da_framework.data.registry import register_domain, register_domain_resolver


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """One published dataset: its name, folders, domains and classes.

    Attributes:
      key: the name prefix and main folder, e.g. ``"office31"``.
      title: the dataset's usual name.
      folders: folder names accepted under the data dir (the first is the documented one).
      domains: its domain names.
      classes: the class list (label ids).
      layout: the expected layout, for messages (``{root}`` and ``{domain}`` filled in).
      read: ``read(dataset, root, domain, name) -> (train, val, test)`` image lists.
    """

    key: str
    title: str
    folders: tuple[str, ...]
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    layout: str
    read: Callable[[ImageDataset, str, str, str], tuple[ImageList, ImageList, ImageList]]

    def root(self, data_dir: str | None) -> str:
        """The dataset folder: the first of :attr:`folders` that exists in the data dir, else the first."""
        base = resolve_data_dir(data_dir)
        for folder in self.folders:
            if os.path.isdir(os.path.join(base, folder)):
                return os.path.join(base, folder)
        return os.path.join(base, self.folders[0])

    def expected(self, root: str, domain: str) -> str:
        """The layout message of one domain."""
        return self.layout.format(root=root, domain=domain)

    def domain(self, domain: str, data_dir: str | None = None, transform: ImageTransform | None = None) -> Domain:
        """The :class:`Domain` ``<key>/<domain>`` read from the data dir.

        Raises:
          DatasetNotPreparedError: the domain's folder (or list) is not in the data dir.
          DomainError: an unknown domain, or a malformed folder or list.
        """
        if domain not in self.domains:
            raise DomainError(f"unknown {self.title} domain {domain!r}; valid: {', '.join(self.domains)}")
        name = f"{self.key}/{domain}"
        train, val, test = self.read(self, self.root(data_dir), domain, name)
        return make_image_domain(name, train, test, self.classes, transform, f"{self.title} {domain}", val=val)


def _folder(ds: ImageDataset, root: str, folder: str, name: str, domain: str) -> ImageList:
    return scan_image_folder(folder, ds.classes, name, ds.expected(root, domain))[0]


def _first_file(*paths: str) -> str | None:
    return next((p for p in paths if os.path.isfile(p)), None)


def _read_office31(ds: ImageDataset, root: str, domain: str, name: str) -> tuple[ImageList, ImageList, ImageList]:
    listed = _first_file(os.path.join(root, "image_list", f"{domain}.txt"))
    if listed:
        images = read_image_list(listed, root, len(ds.classes))
    else:
        images = _folder(ds, root, os.path.join(root, domain, "images"), name, domain)
    return images, images, images


def _read_office_home(ds: ImageDataset, root: str, domain: str, name: str) -> tuple[ImageList, ImageList, ImageList]:
    listed = _first_file(os.path.join(root, "image_list", f"{domain}.txt"))
    if listed:
        images = read_image_list(listed, root, len(ds.classes))
    else:
        spellings = (domain, domain.replace("_", " "))
        found = [os.path.join(root, s) for s in spellings if os.path.isdir(os.path.join(root, s))]
        folder = found[0] if found else os.path.join(root, domain)
        images = _folder(ds, root, folder, name, domain)
    return images, images, images


def _read_visda(ds: ImageDataset, root: str, domain: str, name: str) -> tuple[ImageList, ImageList, ImageList]:
    official = os.path.join(root, domain, "image_list.txt")
    if os.path.isfile(official):
        images = read_image_list(official, os.path.join(root, domain), len(ds.classes))
    elif os.path.isfile(tllib := os.path.join(root, "image_list", f"{domain}.txt")):
        images = read_image_list(tllib, root, len(ds.classes))
    else:
        images = _folder(ds, root, os.path.join(root, domain), name, domain)
    return images, images, images


def _read_domainnet(ds: ImageDataset, root: str, domain: str, name: str) -> tuple[ImageList, ImageList, ImageList]:
    lists = {
        split: _first_file(
            os.path.join(root, f"{domain}_{split}.txt"), os.path.join(root, "image_list", f"{domain}_{split}.txt")
        )
        for split in ("train", "test")
    }
    if lists["train"] and lists["test"]:
        train, test = (read_image_list(lists[s], root, len(ds.classes)) for s in ("train", "test"))
        return train, test, test
    if lists["train"] or lists["test"]:
        have, missing = ("train", "test") if lists["train"] else ("test", "train")
        raise DomainError(
            f"{name}: found {lists[have]} but not {domain}_{missing}.txt beside it; "
            f"DomainNet's split lists come in pairs (layout {ds.expected(root, domain)})"
        )
    images = _folder(ds, root, os.path.join(root, domain), name, domain)
    return images, images, images


OFFICE31 = ImageDataset(
    "office31", "Office-31", ("office31", "Office31"), ("amazon", "dslr", "webcam"), OFFICE31_CLASSES,
    "{root}/{domain}/images/<class>/<image>.jpg (Office-31 as distributed) or {root}/image_list/{domain}.txt "
    "(tllib: lines '{domain}/images/<class>/<file> <label>')",
    _read_office31,
)
OFFICE_HOME = ImageDataset(
    "office_home", "Office-Home", ("office_home", "OfficeHome", "OfficeHomeDataset_10072016"),
    ("Art", "Clipart", "Product", "Real_World"), OFFICE_HOME_CLASSES,
    "{root}/{domain}/<class>/<image>.jpg (Office-Home as distributed) or {root}/image_list/{domain}.txt (tllib)",
    _read_office_home,
)
VISDA2017 = ImageDataset(
    "visda2017", "VisDA-2017", ("visda2017", "VisDA2017", "visda-2017"), ("train", "validation"), VISDA2017_CLASSES,
    "{root}/{domain}/<class>/<image> with {root}/{domain}/image_list.txt (VisDA-2017 as distributed) "
    "or {root}/image_list/{domain}.txt (tllib)",
    _read_visda,
)
DOMAINNET = ImageDataset(
    "domainnet", "DomainNet", ("domainnet", "domain_net", "DomainNet"),
    ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), DOMAINNET_CLASSES,
    "{root}/{domain}/<class>/<image>.jpg with {root}/{domain}_train.txt and {root}/{domain}_test.txt "
    "(lines '{domain}/<class>/<file> <label>')",
    _read_domainnet,
)
DATASETS = {d.key: d for d in (OFFICE31, OFFICE_HOME, VISDA2017, DOMAINNET)}


def _register(ds: ImageDataset) -> None:
    for domain in ds.domains:

        def factory(data_dir: str | None = None, _domain: str = domain) -> Domain:
            return ds.domain(_domain, data_dir)

        factory.__doc__ = f"{ds.title} {domain}: image folder/list under <data_dir>/{ds.folders[0]}/ (256 -> 224)."
        register_domain(
            f"{ds.key}/{domain}", description=f"{ds.title} {domain} (local image files, 224x224x3)", needs_download=True
        )(factory)

    @register_domain_resolver(f"{ds.key}/", f"{ds.key}/<{'|'.join(ds.domains)}>[@<crop>]")
    def resolve(name: str, data_dir: str | None = None) -> Domain:
        base, transform = split_size(name)
        domain = base[len(ds.key) + 1 :]
        if domain not in ds.domains:
            valid = ", ".join(f"{ds.key}/{d}" for d in ds.domains)
            raise DomainError(f"unknown {ds.title} domain {name!r}; valid: {valid} (optionally @<crop>)")
        d = ds.domain(domain, data_dir, transform)
        return dataclasses.replace(d, name=name)


for _ds in DATASETS.values():
    _register(_ds)
