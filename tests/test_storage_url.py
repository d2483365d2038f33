"""``storage_from_url``: storage options as URL query parameters, refused when unknown or
bad, and the CLI's one-line error for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from _proc_harness import run_cli

import trio_jobqueue as jq
from trio_jobqueue.cli._common import ExitCode
from trio_jobqueue.storage.file import COMPACT_BYTES, FileStorage

FILE_ACCEPTED = "accepted: compact_bytes, force_polling, fsync, poll_interval"


def test_file_url_query_sets_the_storage_options(tmp_path: Path) -> None:
    """`file:///path?force_polling=1&fsync=0&poll_interval=0.1&compact_bytes=N` builds a
    FileStorage with exactly those options; without a query, the defaults."""
    url = f"file://{tmp_path}/q?force_polling=1&fsync=0&poll_interval=0.1&compact_bytes=4096"
    storage = jq.storage_from_url(url)
    assert isinstance(storage, FileStorage)
    assert storage.path == str(tmp_path / "q")
    assert (storage.force_polling, storage.fsync) == (True, False)
    assert (storage.poll_interval, storage.compact_bytes) == (0.1, 4096)
    default = jq.storage_from_url(f"file://{tmp_path}/q")
    assert isinstance(default, FileStorage)
    assert (default.force_polling, default.fsync, default.compact_bytes) == (
        False,
        True,
        COMPACT_BYTES,
    )
    # A "?" in a directory name is written %3F and stays part of the path.
    odd = jq.storage_from_url(f"file://{tmp_path}/a%3Fb?fsync=no")
    assert isinstance(odd, FileStorage)
    assert (odd.path, odd.fsync) == (str(tmp_path / "a?b"), False)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True), ("true", True), ("True", True), ("yes", True), ("on", True),
        ("0", False), ("false", False), ("FALSE", False), ("no", False), ("off", False),
    ],
)  # fmt: skip
def test_boolean_parameters_accept_the_usual_spellings(text: str, value: bool) -> None:
    """Booleans accept 1/0, true/false, yes/no, on/off in any case."""
    storage = jq.storage_from_url(f"file:///tmp/q?fsync={text}&force_polling={text}")
    assert isinstance(storage, FileStorage)
    assert (storage.fsync, storage.force_polling) == (value, value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///tmp/q?bogus=1", f"unknown parameter 'bogus' in file storage URL "
         f"'file:///tmp/q?bogus=1'; {FILE_ACCEPTED}"),
        ("file:///tmp/q?key_prefix=x", "unknown parameter 'key_prefix'"),
        ("file:///tmp/q?fsync=maybe", "bad value 'maybe' for parameter 'fsync' in file "
         "storage URL 'file:///tmp/q?fsync=maybe': expected a boolean: 1/0, true/false, "
         "yes/no or on/off"),
        ("file:///tmp/q?fsync", "bad value '' for parameter 'fsync'"),
        ("file:///tmp/q?poll_interval=0", "bad value '0' for parameter 'poll_interval'"),
        ("file:///tmp/q?poll_interval=-1", "parameter 'poll_interval'"),
        ("file:///tmp/q?poll_interval=nan", "expected a finite number of seconds > 0"),
        ("file:///tmp/q?poll_interval=soon", "expected a number of seconds"),
        ("file:///tmp/q?compact_bytes=1.5", "bad value '1.5' for parameter 'compact_bytes'"),
        ("file:///tmp/q?compact_bytes=0", "expected an integer >= 1"),
        ("file:///tmp/q?fsync=1&fsync=0", "parameter 'fsync' given twice"),
        ("file:///tmp/q#frag", "must not have a #fragment"),
        ("memory://?x=1", "unknown parameter 'x' in memory storage URL 'memory://?x=1'; "
         "accepted: none"),
        ("memory://?", None),
    ],
)  # fmt: skip
def test_unknown_parameters_and_bad_values_are_refused(url: str, expected: str | None) -> None:
    """Unknown, repeated or badly valued parameters raise ValueError with one line naming
    the parameter (and the accepted ones); nothing is silently ignored."""
    if expected is None:  # an empty query is no parameter at all
        assert isinstance(jq.storage_from_url(url), jq.MemoryStorage)
        return
    with pytest.raises(ValueError) as info:
        jq.storage_from_url(url)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_unknown_scheme_message_hides_the_password() -> None:
    """An unknown scheme is refused without echoing the URL's password."""
    with pytest.raises(ValueError, match="unknown storage URL") as info:
        jq.storage_from_url("redis+nope://user:s3cret@host/0")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("?bogus=1", "unknown parameter 'bogus'"),
        ("?fsync=maybe", "bad value 'maybe' for parameter 'fsync'"),
    ],
)
def test_cli_refuses_bad_url_parameters_in_one_line(
    tmp_path: Path, query: str, needle: str
) -> None:
    """Every command turns a bad URL parameter into one `trio-jobqueue: error:` line and
    exit 2, before anything is written."""
    url = f"file://{tmp_path}/q{query}"
    for args in (["stats"], ["enqueue", "a", "{}"], ["status", "a"]):
        done = run_cli(*args, "--storage", url)
        assert done.returncode == ExitCode.USAGE, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trio-jobqueue: error: "), done.stderr
        assert needle in lines[0]
        if needle.startswith("unknown"):
            assert lines[0].endswith(FILE_ACCEPTED)
    assert not (tmp_path / "q").exists()
    done = run_cli("status", "a", "--storage", "memory://?x=1")
    assert done.returncode == ExitCode.USAGE and "accepted: none" in done.stderr


def test_cli_file_url_options_reach_the_storage(tmp_path: Path) -> None:
    """A command given `file:///...?force_polling=1&fsync=0` works with those options."""
    url = f"file://{tmp_path}/q?force_polling=yes&fsync=off&poll_interval=0.01"
    assert run_cli("enqueue", "a", "{}", "--storage", url).stdout == "queued\n"
    done = run_cli("status", "a", "--storage", url)
    assert done.returncode == 0 and "state:     queued" in done.stdout


def test_redis_url_query_reaches_redis_storage() -> None:
    """Redis URLs go to RedisStorage whole, query included: `?key_prefix=myapp` sets the
    key prefix, and an unknown parameter is refused by RedisStorage's own parser."""
    from trio_jobqueue.storage.redis import RedisStorage

    storage = jq.storage_from_url("redis://127.0.0.1:6379/0?key_prefix=myapp")
    assert isinstance(storage, RedisStorage) and storage.key_prefix == "myapp"
    default = jq.storage_from_url("redis://127.0.0.1:6379/0")
    assert isinstance(default, RedisStorage) and default.key_prefix == "jq"
    with pytest.raises(ValueError, match="bogus"):
        jq.storage_from_url("redis://127.0.0.1:6379/0?bogus=1")
    done = run_cli("stats", "--storage", "redis://127.0.0.1:9/0?bogus=1")
    assert done.returncode == ExitCode.USAGE, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trio-jobqueue: error: "), done.stderr
    assert "'bogus'" in lines[0] and "key_prefix" in lines[0]
