"""``storage_from_url``: pick a backend, and its options, from a URL.

Storage options travel as URL query parameters, so that every command line and every
``$TRIO_JOBQUEUE_URL`` reaches them: ``file:///var/q?fsync=0&force_polling=1``. Unknown
parameters and bad values are refused (``ValueError``, one line naming the parameter and
the accepted ones), never silently ignored. Redis URLs are handed to
:class:`~trio_jobqueue.RedisStorage` whole: it parses its own query parameters.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable
from typing import Any

from ._base import Storage

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected a boolean: 1/0, true/false, yes/no or on/off")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a finite number of seconds > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected an integer") from None
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


FILE_PARAMETERS: dict[str, Callable[[str], Any]] = {
    "compact_bytes": _positive_int,
    "force_polling": _boolean,
    "fsync": _boolean,
    "poll_interval": _positive_seconds,
}
"""Query parameters of ``file://`` URLs: :class:`~trio_jobqueue.FileStorage`'s keyword
options, each with the parser of its value."""


def _shown(url: str) -> str:
    """``url`` for an error message: without a password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _options(
    url: str, query: str, accepted: dict[str, Callable[[str], Any]], kind: str
) -> dict[str, Any]:
    """The query's parameters, parsed by ``accepted``.

    Raises:
        ValueError: an unknown or repeated parameter, or a bad value (one line naming it).
    """
    where = f"in {kind} storage URL {_shown(url)!r}"
    listed = ", ".join(sorted(accepted)) or "none"
    options: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in accepted:
            raise ValueError(f"unknown parameter {name!r} {where}; accepted: {listed}")
        if name in options:
            raise ValueError(f"parameter {name!r} given twice {where}")
        try:
            options[name] = accepted[name](value)
        except ValueError as exc:
            raise ValueError(f"bad value {value!r} for parameter {name!r} {where}: {exc}") from None
    return options


_REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    }
)


def storage_from_url(url: str) -> Storage:
    """Build an (unopened) storage from a URL.

    * ``memory://``: a :class:`~trio_jobqueue.MemoryStorage` (takes no parameters);
    * ``redis://``, ``rediss://`` (TLS), ``unix://``, ``redis+cluster://h1:p1,h2:p2``
      (Redis Cluster; ``rediss+cluster://`` with TLS), ``redis+sentinel://s1,s2/mymaster``
      (Redis Sentinel): a :class:`~trio_jobqueue.RedisStorage`
      given the whole URL, query included (its own parser reads the parameters it knows,
      such as ``key_prefix``, and refuses the others);
    * ``file:///absolute/path[?param=value&...]``: a :class:`~trio_jobqueue.FileStorage`;
      parameters ``fsync`` and ``force_polling`` (booleans: ``1``/``0``, ``true``/``false``,
      ``yes``/``no``, ``on``/``off``), ``poll_interval`` (seconds > 0) and ``compact_bytes``
      (an integer >= 1). A ``?`` or ``#`` in the path itself must be written ``%3F``/``%23``.

    Raises:
        ValueError: the scheme is unknown, the URL is malformed, or a query parameter is
            unknown, repeated or has a bad value (the message names it and lists the
            accepted ones).
        ImportError: the backend's extra is not installed (the message names it).
    """
    if not isinstance(url, str):
        raise ValueError(f"storage URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _REDIS_SCHEMES:
        from . import __getattr__ as lazy

        redis_storage = lazy("RedisStorage")
        storage: Storage = redis_storage(url)
        return storage
    if scheme in ("memory", "file") and parts.fragment:
        raise ValueError(f"{scheme} storage URL must not have a #fragment: {_shown(url)!r}")
    if scheme == "memory":
        _options(url, parts.query, {}, "memory")
        from .memory import MemoryStorage

        return MemoryStorage()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file storage URL must be file:///absolute/path, not {url!r}")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file storage URL needs an absolute path: {url!r}")
        options = _options(url, parts.query, FILE_PARAMETERS, "file")
        from . import __getattr__ as lazy

        file_storage = lazy("FileStorage")
        storage = file_storage(path, **options)
        return storage
    raise ValueError(
        f"unknown storage URL {_shown(url)!r}: expected memory://, redis://, rediss://, "
        "unix://, redis+cluster://, redis+sentinel:// (rediss+ for TLS) or file:///path"
    )
