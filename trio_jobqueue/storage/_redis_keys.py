"""The Redis key schema of :class:`~trio_jobqueue.storage.redis.RedisStorage`, in one place.

Every key of one namespace (queue name) starts with the same hash tag
``{<prefix>:<name>}`` so a queue lives in one Redis Cluster slot. Prefix and name are
percent-encoded (``urllib.parse.quote`` with no safe characters) before they go into the
tag, so ``{``, ``}``, ``:`` and ``%`` in either cannot end the tag early or make two
namespaces share a key. Job ids and lock names are appended **raw** after a fixed marker
(``:j:``, ``:lock:``): the tag is closed by then, every other key of the namespace has a
different marker, and the id is the whole rest of the key, so distinct ids give distinct
keys whatever bytes they contain (``:``, ``{}``, unicode).

==========================  ======  ===============================================
key                         type    contents
==========================  ======  ===============================================
``{tag}:j:<job id>``        hash    one job (fields below); a TTL (``PEXPIREAT``)
                                    only once terminal, for garbage collection
``{tag}:ready``             list    ids ready to claim, head first
``{tag}:ready:quarantine``  list    ids of corrupt job hashes a claim skipped
``{tag}:delayed``           zset    failing jobs waiting out a retry delay, by due
``{tag}:leases``            zset    processing jobs, by lease deadline
``{tag}:completed``         zset    completed jobs, by expiry time
``{tag}:failed``            zset    failed jobs, by expiry time
``{tag}:lock:<name>``       hash    leader lock: ``owner``, ``epoch``, ``exp``
``{tag}:claim:<nonce>``     string  ids one claim took (expires with its lease): a
                                    claim resent after a lost reply gets them back
``{tag}:rc:<nonce>``        string  reply of one cancel/reap/purge/lock release, kept
                                    until its call can no longer be resent
``{tag}:ev``                channel every event of the namespace (see ``lua/_lib``)
``{tag}:ev:done``           channel completed/failed/cancelled events (job watchers)
``{tag}:ev:wake``           channel "a job became claimable" (blocked claims)
==========================  ======  ===============================================

Job hash fields: ``payload state max created attempts ttl result error finished expires
due worker token lease nonce settled``. Times are epoch seconds of the storage clock
(server ``TIME`` + the testing offset), written with ``%.17g`` so they round-trip exactly.
"""

from __future__ import annotations

from urllib.parse import quote

import attrs

__all__ = ["NamespaceKeys", "hash_tag"]


def _encode(part: str) -> str:
    return quote(part, safe="")


def hash_tag(prefix: str, ns: str) -> str:
    """The Cluster hash tag shared by every key of ``ns`` under ``prefix``."""
    return "{" + _encode(prefix) + ":" + _encode(ns) + "}"


@attrs.frozen
class NamespaceKeys:
    """The keys of one namespace. ``base`` is the hash tag; the rest derive from it."""

    base: str

    @classmethod
    def of(cls, prefix: str, ns: str) -> NamespaceKeys:
        return cls(hash_tag(prefix, ns))

    @property
    def job_prefix(self) -> str:
        """Prefix of the per-job hashes: the Lua scripts append the raw job id."""
        return self.base + ":j:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    @property
    def ready(self) -> str:
        return self.base + ":ready"

    @property
    def quarantine(self) -> str:
        """Ids of corrupt job records found by ``claim`` (left in place for inspection)."""
        return self.ready + ":quarantine"

    @property
    def delayed(self) -> str:
        return self.base + ":delayed"

    @property
    def leases(self) -> str:
        return self.base + ":leases"

    @property
    def completed(self) -> str:
        return self.base + ":completed"

    @property
    def failed(self) -> str:
        return self.base + ":failed"

    def lock(self, name: str) -> str:
        return self.base + ":lock:" + name

    def claim_record(self, nonce: str) -> str:
        """What the claim with ``nonce`` took (see ``lua/claim.lua``)."""
        return self.base + ":claim:" + nonce

    def reply(self, nonce: str) -> str:
        """The cached reply of the call with ``nonce`` (see ``cached_reply`` in
        ``lua/_lib.lua``)."""
        return self.base + ":rc:" + nonce

    @property
    def events(self) -> str:
        """The pub/sub channel of the namespace's events."""
        return self.base + ":ev"

    @property
    def done_channel(self) -> str:
        """Terminal events only: what ``watch_job`` listens to."""
        return self.events + ":done"

    @property
    def wake_channel(self) -> str:
        """A bare wake-up whenever a job became claimable: what blocked claims listen to."""
        return self.events + ":wake"

    def standard(self) -> list[str]:
        """KEYS[1..7] of most scripts: job prefix, ready, delayed, leases, completed,
        failed, events channel."""
        return [
            self.job_prefix,
            self.ready,
            self.delayed,
            self.leases,
            self.completed,
            self.failed,
            self.events,
        ]
