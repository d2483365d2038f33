"""Redis URLs and ``RedisStorage`` options, parsed with the standard library only.

Accepted forms (``docs/redis.md``, "Connecting")::

    redis://[[user]:password@]host[:port][/db][?option=value&...]
    rediss://...                                  (TLS)
    unix://[[user]:password@]/path/to/socket[?db=N&option=value&...]
    redis+cluster://[[user]:password@]host1[:port],host2[:port],...[/0][?option=value&...]
    rediss+cluster://...                          (Redis Cluster over TLS)
    redis+sentinel://[[user]:password@]s1[:port],s2[:port]/service[/db][?...]
    rediss+sentinel://...                         (TLS to the sentinels and the master)

User and password are percent-decoded. The query string carries storage options
(:data:`STORAGE_OPTIONS`) and connection options (:data:`CONNECTION_OPTIONS`); anything
else is refused with a :class:`ValueError` that names it, and so is a value that does not
parse. Both clients get the URL without its query (:attr:`RedisURL.base`) plus the
connection options as typed values, so redis-py never sees our own parameters.
"""

from __future__ import annotations

import math
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "CONNECTION_OPTIONS",
    "DEFAULTS",
    "STORAGE_OPTIONS",
    "RedisURL",
    "check_replicas",
    "check_seconds",
    "parse_url",
    "redact",
    "split_query",
]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

DEFAULTS: Mapping[str, Any] = {
    "key_prefix": "jq",
    "retry_timeout": 10.0,
    "command_timeout": 5.0,
    "health_check_interval": 5.0,
    "claim_repoll": 5.0,
    "script_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "durable_enqueue": 0,
    "durable_timeout": 0.5,
}
"""Defaults of the options that have one (documented in ``docs/redis.md``)."""


def check_seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds > 0.

    Raises:
        ValueError: it is not one (the message names the option and the value).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid {name} {value!r}: expected a finite number of seconds > 0")
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"invalid {name} {value!r}: expected a finite number of seconds > 0")
    return seconds


def check_replicas(name: str, value: object) -> int:
    """``value`` as a number of replicas (an int >= 0, or its decimal text).

    Raises:
        ValueError: it is not one (the message names the option and the value).
    """
    count = -1
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value)
    if count < 0:
        raise ValueError(f"invalid {name} {value!r}: expected a number of replicas >= 0")
    return count


def _text(name: str, value: str) -> str:
    if not value:
        raise ValueError(f"invalid {name} {value!r}: expected a non-empty string")
    return value


def _client(name: str, value: str) -> str:
    if value not in ("trio", "asyncio"):
        raise ValueError(f'invalid {name} {value!r}: expected "trio" or "asyncio"')
    return value


def _db(name: str, value: str) -> int:
    try:
        db = int(value)
    except ValueError:
        db = -1
    if db < 0:
        raise ValueError(f"invalid {name} {value!r}: expected a database number >= 0")
    return db


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid {name} {value!r}: expected true/false (or 1/0, yes/no, on/off)")


def _cert_reqs(name: str, value: str) -> str:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError(f'invalid {name} {value!r}: expected "none", "optional" or "required"')
    return value.lower()


def _tls_version(name: str, value: str) -> ssl.TLSVersion:
    try:
        return ssl.TLSVersion[value.replace(".", "_")]
    except KeyError:
        raise ValueError(
            f"invalid {name} {value!r}: expected an ssl.TLSVersion name such as TLSv1_2"
        ) from None


STORAGE_OPTIONS: Mapping[str, Callable[[str, str], Any]] = {
    "key_prefix": _text,
    "retry_timeout": check_seconds,
    "command_timeout": check_seconds,
    "health_check_interval": check_seconds,
    "claim_repoll": check_seconds,
    "script_timeout": check_seconds,
    "client": _client,
    "cluster": _flag,
    "durable_enqueue": check_replicas,
    "durable_timeout": check_seconds,
}
"""Options of :class:`~trio_jobqueue.storage.redis.RedisStorage` itself, with their
parsers (URL text -> value)."""

CONNECTION_OPTIONS: Mapping[str, Callable[[str, str], Any]] = {
    "db": _db,
    "socket_connect_timeout": check_seconds,
    "ssl_keyfile": _text,
    "ssl_certfile": _text,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_ca_data": _text,
    "ssl_check_hostname": _flag,
    "ssl_password": _text,
    "ssl_min_version": _tls_version,
    "ssl_ciphers": _text,
}
"""Connection options accepted in the URL (and as keyword arguments by both clients)."""


@attrs.frozen
class RedisURL:
    """A parsed Redis URL."""

    scheme: str
    """``redis``, ``rediss`` or ``unix``."""
    host: str
    port: int
    path: str | None
    """The socket path of a ``unix://`` URL."""
    db: int | None
    """The database from the path (``/2``), ``None`` when absent."""
    username: str | None
    password: str | None
    query: Mapping[str, str]
    """The query parameters, not validated yet (see :func:`split_query`)."""
    base: str
    """The URL without its query string."""
    seeds: tuple[tuple[str, int], ...] = ()
    """The ``(host, port)`` of every node named (a cluster URL may name several)."""
    cluster: bool = False
    """A ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    service: str | None = None
    """The master's name of a ``redis+sentinel://`` URL."""

    @property
    def sentinel(self) -> bool:
        """A ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
        return self.service is not None

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``) or the socket path, for messages."""
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> RedisURL:
    """Parse ``redis://``, ``rediss://`` and ``unix://`` URLs.

    Raises:
        ValueError: not such a URL, a bad port or database number, or a repeated query
            parameter.
    """
    if not isinstance(url, str):
        raise ValueError(f"a Redis URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _parse_cluster_url(url, parts)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _parse_sentinel_url(url, parts)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r} in {redact(url)!r}:"
            " expected redis://, rediss://, unix://, redis+cluster://, rediss+cluster://,"
            " redis+sentinel:// or rediss+sentinel://"
        )
    query = _query(parts.query)
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// Redis URL needs a socket path: {redact(url)!r}")
        return RedisURL(
            scheme, "localhost", DEFAULT_PORT, urllib.parse.unquote(parts.path), None,
            username, password, query, base,
        )  # fmt: skip
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"invalid port in the Redis URL {redact(url)!r}") from None
    db: int | None = None
    path = parts.path.strip("/")
    if path:
        db = _db("database number", path)
    return RedisURL(
        scheme, parts.hostname or "localhost", port, None, db, username, password, query, base
    )


def _query(text: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        if name in query:
            raise ValueError(f"option {name!r} is given twice in the Redis URL")
        query[name] = value
    return query


def _parse_cluster_url(url: str, parts: urllib.parse.SplitResult) -> RedisURL:
    """``redis+cluster://[[user]:password@]h1[:p1],h2[:p2]...[/0][?...]``: every node
    named is a seed (any one that answers gives the slot map).

    Raises:
        ValueError: no host, a bad port, or a database other than 0 (a cluster has
            only database 0).
    """
    username, password, seeds = _nodes(url, parts, DEFAULT_PORT, "Redis Cluster")
    path = parts.path.strip("/")
    if path and _db("database number", path) != 0:
        raise ValueError(f"a Redis Cluster has database 0 only, not {path}: {redact(url)!r}")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    host, port = seeds[0]
    return RedisURL(
        parts.scheme.lower(), host, port, None, 0, username, password, _query(parts.query),
        base, tuple(seeds), cluster=True,
    )  # fmt: skip


def _parse_sentinel_url(url: str, parts: urllib.parse.SplitResult) -> RedisURL:
    """``redis+sentinel://[[user]:password@]s1[:p1],s2[:p2]/service[/db][?...]``: the
    sentinels (port 26379 by default) name the master of ``service``; user and password
    are the master's.

    Raises:
        ValueError: no sentinel, a bad port, no service name or a bad database.
    """
    username, password, seeds = _nodes(url, parts, DEFAULT_SENTINEL_PORT, "Redis Sentinel")
    service, _, db_text = urllib.parse.unquote(parts.path).strip("/").partition("/")
    if not service:
        raise ValueError(
            f"a Redis Sentinel URL needs the master's name (/mymaster): {redact(url)!r}"
        )
    db = _db("database number", db_text) if db_text else None
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    host, port = seeds[0]
    return RedisURL(
        parts.scheme.lower(), host, port, None, db, username, password, _query(parts.query),
        base, tuple(seeds), service=service,
    )  # fmt: skip


def _nodes(
    url: str, parts: urllib.parse.SplitResult, default_port: int, what: str
) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """The user, password and ``(host, port)`` list of a multi-host URL.

    Raises:
        ValueError: no host, or a bad port.
    """
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            port = -1
        if not host or not 0 < port < 65536:
            raise ValueError(f"invalid node {item!r} in the {what} URL {redact(url)!r}")
        seeds.append((host, port))
    if not seeds:
        raise ValueError(f"a {what} URL needs at least one host:port: {redact(url)!r}")
    return username, password, seeds


def split_query(query: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate and convert URL query parameters into ``(storage options, connection
    options)``.

    Raises:
        ValueError: an unknown parameter (all of them are named, with the accepted ones)
            or a value that does not parse (named with its option).
    """
    unknown = sorted(set(query) - set(STORAGE_OPTIONS) - set(CONNECTION_OPTIONS))
    if unknown:
        accepted = ", ".join(sorted({*STORAGE_OPTIONS, *CONNECTION_OPTIONS}))
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in the Redis URL;"
            f" accepted: {accepted}"
        )
    storage: dict[str, Any] = {}
    connection: dict[str, Any] = {}
    for name, value in query.items():
        if name in STORAGE_OPTIONS:
            storage[name] = STORAGE_OPTIONS[name](name, value)
        else:
            connection[name] = CONNECTION_OPTIONS[name](name, value)
    return storage, connection


def redact(url: str) -> str:
    """``url`` without its password (for error messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment)
    )
