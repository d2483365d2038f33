"""The Redis key schema of :class:`~trio_jobqueue.storage.redis.RedisStorage`, in one place.

Every key of one namespace (queue name) starts with the same hash tag
``{<prefix>:<name>}`` so a queue lives in one Redis Cluster slot. Prefix and name are
percent-encoded (``urllib.parse.quote`` with no safe characters) before they go into the
tag, so ``{``, ``}``, ``:`` and ``%`` in either cannot end the tag early or make two
namespaces share a key. Job ids and lock names are appended **raw** after a fixed marker
(``:j:``, ``:b:``, ``:done:``, ``:lock:``): the tag is closed by then, every other key of
the namespace has a different marker, and the id is the whole rest of the key, so
distinct ids give distinct keys whatever bytes they contain (``:``, ``{}``, unicode).

==========================  ======  ===============================================
key                         type    contents
==========================  ======  ===============================================
``{tag}:j:<job id>``        string  one job record (MessagePack, see ``lua/_lib``);
                                    a TTL (``PEXPIREAT``) only once terminal, for
                                    garbage collection
``{tag}:b:<job id>``        hash    a job's payload/result/error longer than 16 KiB
                                    (fields ``p r e``), written once
``{tag}:queue``             zset    ready ids by score (-priority * 2^40 + seq)
``{tag}:seq``               hash    the ready order's counters: ``t`` (tail, up),
                                    ``h`` (head, down), ``pu pn pe`` (a promotion of
                                    due retries in progress)
``{tag}:ready:quarantine``  list    ids of corrupt job records a claim skipped
``{tag}:delayed``           zset    failing jobs waiting out a retry delay, by due
``{tag}:leases``            zset    processing jobs, by lease deadline
``{tag}:completed``         zset    completed jobs, by expiry time
``{tag}:failed``            zset    failed jobs, by expiry time
``{tag}:wake``              list    wake-up tokens: one per job made claimable (at
                                    most 64), each taken by one blocked claimer
``{tag}:lock:<name>``       hash    leader lock: ``owner``, ``epoch``, ``exp``
``{tag}:claim:<nonce>``     string  ids one claim took (expires with its lease): a
                                    claim resent after a lost reply gets them back
``{tag}:rc:<nonce>``        string  reply of one cancel/reap/purge/lock release, kept
                                    until its call can no longer be resent
``{tag}:sync``              string  a marker of durable enqueue (1 s TTL), written
                                    when the call itself wrote nothing
``{tag}:ev``                channel every event of the namespace (see ``lua/_lib``)
``{tag}:done:<job id>``     channel that job's terminal events (its watchers only)
``{tag}:ctl``               channel force-cancels of running jobs (every worker)
==========================  ======  ===============================================

Both channels are sharded (``SPUBLISH``/``SSUBSCRIBE``) when the server has sharded
pub/sub, else classic. Times are epoch seconds of the storage clock (server ``TIME`` +
the testing offset).
"""

from __future__ import annotations

import functools
import hashlib
from urllib.parse import quote, unquote

import attrs

__all__ = ["NamespaceKeys", "hash_tag", "namespace_of", "namespaces_pattern"]


def _encode(part: str) -> str:
    return quote(part, safe="")


DONE_SHARDS = 256
"""Channels of terminal events per namespace: a watcher hears about 1/256 of the
namespace's outcomes, and a process waiting on job after job keeps its channels
subscribed (they linger) instead of subscribing once per job."""


def done_shard(job_id: str) -> str:
    """The two first hex digits of the SHA-1 of the id's UTF-8 bytes (the Lua scripts
    compute the same with ``redis.sha1hex``)."""
    return hashlib.sha1(job_id.encode("utf-8")).hexdigest()[:2]


def namespaces_pattern(prefix: str) -> str:
    """A ``SCAN`` glob for the keys of every namespace under ``prefix`` except the per-job
    records and blobs (``:j:``/``:b:``), which would make the reply as large as the
    queue: every namespace holding anything has one of its index keys (``queue``,
    ``seq``, ``completed``, ``workers``...). The prefix is percent-encoded, so it holds no
    glob character."""
    return "{" + _encode(prefix) + ":*}:[^jb]*"


def namespace_of(prefix: str, key: bytes) -> str | None:
    """The namespace whose hash tag starts ``key``, or ``None`` for a foreign key. (The
    name is percent-encoded in the tag, so the first ``}`` closes it.)"""
    head = ("{" + _encode(prefix) + ":").encode("ascii")
    if not key.startswith(head):
        return None
    end = key.find(b"}", len(head))
    if end < 0:
        return None
    try:
        name = unquote(key[len(head) : end].decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return name if name and hash_tag(prefix, name) == key[: end + 1].decode("ascii") else None


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
    def blob_prefix(self) -> str:
        """Prefix of the per-job hashes of large payloads/results/errors."""
        return self.base + ":b:"

    @property
    def queue(self) -> str:
        """The ready jobs, a sorted set (see "Ready order" in ``lua/_lib.lua``)."""
        return self.base + ":queue"

    @property
    def seq(self) -> str:
        return self.base + ":seq"

    @property
    def quarantine(self) -> str:
        """Ids of corrupt job records found by ``claim`` (left in place for inspection)."""
        return self.base + ":ready:quarantine"

    @property
    def delayed(self) -> str:
        return self.base + ":delayed"

    @property
    def scheduled(self) -> str:
        """Jobs enqueued for a later time (id -> ``run_at``): an index next to ``delayed``,
        which holds them for promotion."""
        return self.base + ":scheduled"

    @property
    def leases(self) -> str:
        return self.base + ":leases"

    @property
    def completed(self) -> str:
        return self.base + ":completed"

    @property
    def failed(self) -> str:
        return self.base + ":failed"

    @property
    def wake(self) -> str:
        """Wake-up tokens, one per job made claimable: what blocked claimers ``BLPOP``."""
        return self.base + ":wake"

    @property
    def sync(self) -> str:
        """A short-lived marker a durable enqueue writes when its own call wrote nothing
        (a duplicate, a resent call), so that ``WAIT`` covers the job found."""
        return self.base + ":sync"

    @property
    def cursors(self) -> str:
        """Schedule id -> the last tick fired (see ``lua/fire_schedule.lua``)."""
        return self.base + ":cursors"

    def lock(self, name: str) -> str:
        return self.base + ":lock:" + name

    @property
    def worker_prefix(self) -> str:
        """Prefix of the worker registrations (the raw worker id is appended)."""
        return self.base + ":w:"

    def worker(self, worker_id: str) -> str:
        return self.worker_prefix + worker_id

    @property
    def workers(self) -> str:
        """The registry index: worker id -> expiry of its registration."""
        return self.base + ":workers"

    def claim_record(self, nonce: str) -> str:
        """What the claim with ``nonce`` took (see ``lua/claim.lua``)."""
        return self.base + ":claim:" + nonce

    def reply(self, nonce: str) -> str:
        """The cached reply of the call with ``nonce`` (see ``cached_reply`` in
        ``lua/_lib.lua``)."""
        return self.base + ":rc:" + nonce

    @property
    def events(self) -> str:
        """The channel of the namespace's events."""
        return self.base + ":ev"

    @property
    def control(self) -> str:
        """The channel of force-cancels of running jobs, which every worker of the
        namespace listens to (see ``lua/force_cancel.lua``)."""
        return self.base + ":ctl"

    @property
    def done_prefix(self) -> str:
        """Prefix of the channels of terminal events (the shard is appended)."""
        return self.base + ":done:"

    def done_channel(self, job_id: str) -> str:
        """The channel of job ``job_id``'s terminal events: one of :data:`DONE_SHARDS`
        per namespace, chosen by the id (``done_shard``), which ``watch_job`` listens to."""
        return self.done_prefix + done_shard(job_id)

    def standard(self) -> tuple[str, ...]:
        """KEYS[1..13] of most scripts (see ``lua/_lib.lua``): job prefix, leases,
        completed, failed, events channel, blob prefix, job channel prefix, queue, seq,
        wake, delayed, quarantine, scheduled."""
        return self._standard

    def settle(self) -> tuple[str, ...]:
        """KEYS[1..7] of ``complete`` and ``fail``: the first seven standard keys, all
        they use (five keys fewer to send and parse on the hottest call)."""
        return self._standard[:7]

    @functools.cached_property
    def _standard(self) -> tuple[str, ...]:
        return (
            self.job_prefix,
            self.leases,
            self.completed,
            self.failed,
            self.events,
            self.blob_prefix,
            self.done_prefix,
            self.queue,
            self.seq,
            self.wake,
            self.delayed,
            self.quarantine,
            self.scheduled,
        )
