"""The ``trio-jobqueue`` command line (also ``python -m trio_jobqueue``).

:mod:`._main` holds the parser, :func:`main` and the exit codes; :mod:`._worker`,
:mod:`._admin` and :mod:`._demo` the commands; :mod:`._common` what they share (storage
options, ``ExitCode``). ``stats`` reads the storage's worker registry (``Queue.workers()``).
Reference: ``docs/cli.md``.

This module only re-exports.
"""

from ._main import main as main
