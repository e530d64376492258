"""The Python API: submit, watch, cancel, read logs and status.

::

    async with Client.connect() as fed:
        job = await fed.submit(["python", "train.py"], gpu=1, priority="high")
        record = await job.wait()
        print(record.state, record.exit_code)

The client finds the federation through the connection file in the state directory (``fed up``
writes it) and talks to each region's own server. A submission is validated here first (bad
input never leaves the process) and then stored on the region's workloads stream with the job id
as ``Nats-Msg-Id``: the returned :class:`Job` exists durably once ``submit`` returns.

A :class:`Client` is built in layers, one module and one class each, every class extending the
one before it:

* :mod:`~federation.client.connections` (:class:`~federation.client.connections.Connections`):
  the federation's regions and a cached connection to each (and to the hub);
* :mod:`~federation.client.reading` (:class:`~federation.client.reading.Reading`): job records,
  explanations, waiting, job arrays' elements, listings and output;
* :mod:`~federation.client.files` (:class:`~federation.client.files.Files`): jobs' input files
  uploaded to a region's object store, and their output files read back;
* :mod:`~federation.client.submitting` (:class:`~federation.client.submitting.Submitting`):
  submitting jobs, job arrays and workflows, and cancelling;
* :mod:`~federation.client.auditing` (:class:`~federation.client.auditing.Auditing`): the audit
  trail, usage accounting and the quarantine;
* :mod:`~federation.client.status` (:class:`~federation.client.status.Status`): ``fed status``,
  capacity summaries and views.

Beside them, without a client: :mod:`~federation.client.records` (what the client answers with:
:class:`RegionStatus`, :class:`NodeStatus`, :class:`Explanation`) and
:mod:`~federation.client.handles` (:class:`Job` and :class:`JobArray`).
"""

from __future__ import annotations

from federation.client.connections import HUB_KEY
from federation.client.handles import Job, JobArray
from federation.client.reading import ARRAY_POLL, TENANT_POLL, JobsPage
from federation.client.records import Explanation, NodeStatus, RegionStatus, request_text
from federation.client.status import Status
from federation.client.submitting import (
    ARRAY_WINDOW,
    MAX_ARRAY_JOBS,
    WORKFLOW_KEYS,
    new_job_id,
    workflow_order,
)


class Client(Status):
    """A connection to a federation; use ``async with Client.connect(...) as fed``."""


__all__ = [
    "ARRAY_POLL",
    "ARRAY_WINDOW",
    "HUB_KEY",
    "MAX_ARRAY_JOBS",
    "TENANT_POLL",
    "WORKFLOW_KEYS",
    "Client",
    "Explanation",
    "Job",
    "JobArray",
    "JobsPage",
    "NodeStatus",
    "RegionStatus",
    "new_job_id",
    "request_text",
    "workflow_order",
]
