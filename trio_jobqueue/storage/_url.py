"""``storage_from_url``: pick a backend from a URL."""

from __future__ import annotations

import urllib.parse

from ._base import Storage


def storage_from_url(url: str) -> Storage:
    """Build an (unopened) storage from ``memory://``, ``redis://``/``rediss://`` or
    ``file:///absolute/path``.

    Raises:
        ValueError: the scheme is unknown or the URL is malformed.
    """
    if not isinstance(url, str):
        raise ValueError(f"storage URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from .memory import MemoryStorage

        return MemoryStorage()
    if scheme in ("redis", "rediss", "unix"):
        from . import __getattr__ as lazy

        redis_storage = lazy("RedisStorage")
        storage: Storage = redis_storage(url)
        return storage
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file storage URL must be file:///absolute/path, not {url!r}")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file storage URL needs an absolute path: {url!r}")
        from . import __getattr__ as lazy

        file_storage = lazy("FileStorage")
        storage = file_storage(path)
        return storage
    raise ValueError(
        f"unknown storage URL {url!r}: expected memory://, redis://, rediss:// or file:///path"
    )
