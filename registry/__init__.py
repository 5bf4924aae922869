"""The registry: a distribution API client for the daemon and a registry server.

* :mod:`.spec` — media types, name/tag/digest grammar and error codes shared by both sides.
* :mod:`.client` — pull, push and login against any OCI distribution registry (asyncio,
  aiohttp), with the Docker token flow, TLS settings and resumable downloads.
* :mod:`.auth` — credentials: Docker's ``config.json``, ``X-Registry-Auth`` headers and
  ``WWW-Authenticate`` challenges.
* :mod:`.storage` — the server's content-addressed filesystem storage and its garbage
  collector (synchronous).
* :mod:`.server` — ``engine registry serve``: the OCI distribution API v2 over aiohttp.
* :mod:`.htpasswd` and :mod:`.token` — the server's access control: bcrypt basic auth and
  per-repository rules, and the bearer tokens of its own token service.

The server is not part of the daemon: it is a program of its own that the ``engine`` CLI
starts with ``registry serve`` (see :func:`engine.registry.server.main`), and it imports
nothing of ``engine.core``. The client works on the daemon's stores and is used by the
daemon's API (``engine.core.api.distribution``).
"""
