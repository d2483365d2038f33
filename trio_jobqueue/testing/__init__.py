"""The public conformance kit: prove that a :class:`~trio_jobqueue.storage.Storage` keeps
the contract.

* :func:`run_storage_machine` runs a Hypothesis state machine that drives a storage and an
  independent model side by side (see ``docs/testing-kit.md``);
* :func:`machine_rules` names the machine's operations, for focusing it with ``rules=``;
* :func:`make_storage_machine` and :func:`open_storage_portal` are its building blocks, for
  running the machine with your own Hypothesis setup (:meth:`StoragePortal.start` runs a
  long-lived task, such as an event subscription, in the portal's loop);
* :func:`random_blob` makes the large binary payloads the machine prints in
  counterexamples;
* :data:`API_CHECKS` are plain async checks of queue-level behaviour.
"""

from ._checks import API_CHECKS as API_CHECKS
from ._machine import DEFAULT_SETTINGS as DEFAULT_SETTINGS
from ._machine import THOROUGH_SETTINGS as THOROUGH_SETTINGS
from ._machine import StorageMachine as StorageMachine
from ._machine import machine_rules as machine_rules
from ._machine import make_storage_machine as make_storage_machine
from ._machine import random_blob as random_blob
from ._machine import run_storage_machine as run_storage_machine
from ._model import ModelEvent as ModelEvent
from ._model import StorageModel as StorageModel
from ._portal import PortalTask as PortalTask
from ._portal import StoragePortal as StoragePortal
from ._portal import open_storage_portal as open_storage_portal
