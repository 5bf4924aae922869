"""Image and layer storage.

* :mod:`.content` — :class:`ContentStore`, blobs by digest, verified before visible.
* :mod:`.archive` — safe layer extraction, diff tars, change lists.
* :mod:`.layers` — :class:`LayerStore`, unpacked layers (overlayfs or copying driver)
  and container read-write layers.
* :mod:`.images` — :class:`ImageStore`, image records, tags and Docker's rules for
  deleting and pruning them.
* :mod:`.reference` — image reference parsing and normalisation.
* :mod:`.transfer` — ``import``, ``commit``, ``save`` and ``load``.

Everything here is synchronous and blocking: the daemon calls it from an executor.
"""

from .archive import ExtractStats, changes, extract_layer, tar_dir, write_diff_tar
from .content import ContentStore
from .images import Image, ImageLayer, ImageStore
from .layers import Layer, LayerStore, chain_id
from .reference import Reference, familiar, normalize, parse

__all__ = [
    "ContentStore",
    "ExtractStats",
    "Image",
    "ImageLayer",
    "ImageStore",
    "Layer",
    "LayerStore",
    "Reference",
    "chain_id",
    "changes",
    "extract_layer",
    "familiar",
    "normalize",
    "parse",
    "tar_dir",
    "write_diff_tar",
]
