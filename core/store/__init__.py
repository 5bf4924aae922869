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
Import the modules themselves: the package imports nothing, so a daemon that is only
running containers never loads the tar and compression code.
"""
