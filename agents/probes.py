"""Measure the host and turn the sharing policy into an offer.

:func:`sample_host` reads the machine (psutil; NVML through ``nvidia-ml-py`` when it is installed
and finds a GPU), subtracting what the federation's own workloads use, so a busy job does not
make its node look busy to itself. :func:`build_offer` is pure: a sample, a config and a time in,
the :class:`~federation.schemas.Offer` out.

Policy semantics (``[sharing]`` in the agent's TOML): a resource is offered only while the host's
utilisation (excluding federation workloads) is at most its ``*_max`` and at least its ``*_min``
remains free; otherwise that resource is offered as zero until the next check. A GPU is offered
per device by the same rule. Declared capacity (``cpu``, ``memory``, ``gpu_ids``) is the ceiling.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import psutil

from federation.config import AgentConfig
from federation.schemas import Offer


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU as NVML reports it."""

    id: str
    utilization: float
    memory_free_mb: float
    model: str = ""


@dataclass(frozen=True, slots=True)
class HostSample:
    """The host's load, excluding the federation's own workloads."""

    cpu_ids: tuple[int, ...]
    cpu_percent: float
    memory_total: int
    memory_available: int
    gpus: tuple[GpuSample, ...] = ()

    @property
    def memory_percent(self) -> float:
        """Used memory as a percentage of the total."""
        if not self.memory_total:
            return 0.0
        return 100.0 * (self.memory_total - self.memory_available) / self.memory_total


@dataclass
class HostProbe:
    """Samples the host; remembers process handles so per-process CPU percentages are meaningful."""

    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def sample(self, workload_pids: set[int]) -> HostSample:
        """One reading; ``workload_pids`` are the process groups of running federation jobs."""
        cpu_ids = (
            tuple(sorted(os.sched_getaffinity(0)))
            if hasattr(os, "sched_getaffinity")
            else tuple(range(psutil.cpu_count() or 1))
        )
        total_percent = psutil.cpu_percent(interval=None)
        own_cpu, own_rss = 0.0, 0
        pids = set(workload_pids)
        for pid in workload_pids:  # a workload's children are the workload too
            with contextlib.suppress(psutil.Error):
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
        for pid in pids:
            try:
                proc = self._procs.setdefault(pid, psutil.Process(pid))
                own_cpu += proc.cpu_percent(interval=None)
                own_rss += proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        host_cores = psutil.cpu_count() or 1
        excluding = max(0.0, total_percent - own_cpu / host_cores)
        memory = psutil.virtual_memory()
        return HostSample(
            cpu_ids=cpu_ids,
            cpu_percent=excluding,
            memory_total=int(memory.total),
            memory_available=int(memory.available) + own_rss,
            gpus=tuple(_nvml_gpus()),
        )


def _nvml_gpus() -> list[GpuSample]:
    try:
        import pynvml  # optional: the `gpu` extra (nvidia-ml-py)
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    out = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(GpuSample(str(index), float(util.gpu), mem.free / 2**20, str(name)))
    finally:
        pynvml.nvmlShutdown()
    return out


def declared_devices(config: AgentConfig, sample: HostSample) -> tuple[list[int], list[str], bool]:
    """The node's own devices (cores, GPU ids, pinned?), before any sharing threshold applies.

    Cores are real host core ids when the declared count fits the host (``pinned``), else
    synthetic ids ``0..n-1``. GPU ids are the declared ones, else NVML's. Duplicates collapse.
    """
    host_cores = len(sample.cpu_ids)
    declared_cpu = config.cpu or host_cores
    pinned = declared_cpu <= host_cores and hasattr(os, "sched_setaffinity")
    cores = list(sample.cpu_ids[:declared_cpu]) if pinned else list(range(declared_cpu))
    gpus = list(dict.fromkeys(config.gpu_ids)) or [gpu.id for gpu in sample.gpus]
    return cores, gpus, pinned


def build_offer(config: AgentConfig, sample: HostSample, now: float) -> Offer:
    """What the node shares now under its policy (pure)."""
    policy = config.sharing
    host_cores = len(sample.cpu_ids)
    cores, gpu_ids, pinned = declared_devices(config, sample)
    declared_cpu = len(cores)
    notes = (
        [] if pinned else [f"declared {declared_cpu} cores on a {host_cores}-core host: jobs run unpinned"]
    )

    free_cores = host_cores * (1 - sample.cpu_percent / 100.0)
    if sample.cpu_percent > policy.cpu_percent_max or free_cores < policy.cpu_min_cores:
        cores = []
        notes.append(f"cpu withheld: host at {sample.cpu_percent:.0f}% ({free_cores:.1f} cores free)")

    memory = config.memory or sample.memory_total
    available_gb = sample.memory_available / 1024**3
    if sample.memory_percent > policy.memory_percent_max or available_gb < policy.memory_min_gb:
        memory = 0
        notes.append(f"memory withheld: host at {sample.memory_percent:.0f}% ({available_gb:.1f} GiB free)")

    measured = {gpu.id: gpu for gpu in sample.gpus}
    gpus = []
    for gpu_id in gpu_ids:
        reading = measured.get(gpu_id)
        if reading is not None and (
            reading.utilization > policy.gpu_utilization_max
            or reading.memory_free_mb < policy.gpu_memory_min_mb
        ):
            notes.append(f"gpu {gpu_id} withheld: {reading.utilization:.0f}% busy")
            continue
        gpus.append(gpu_id)

    labels = dict(config.labels)
    models = sorted({gpu.model for gpu in sample.gpus if gpu.model})
    if models and "gpu_model" not in labels:
        labels["gpu_model"] = ",".join(models)

    custom = dict(config.custom)
    if not policy.enabled:
        cores, memory, gpus, custom = [], 0, [], {}
        notes.append("sharing disabled")
    return Offer(
        node=config.node,
        region=config.region,
        cores=cores,
        memory=memory,
        gpus=gpus,
        pinned=pinned,
        max_allocations=policy.max_offers_per_node,
        labels=labels,
        capacity_cpu=declared_cpu,
        capacity_memory=config.memory or sample.memory_total,
        capacity_gpu=len(gpu_ids),
        sent_at=now,
        expires_at=now + policy.offer_expiry,
        note="; ".join(notes),
        custom=custom,
        cpu_percent=min(100.0, max(0.0, sample.cpu_percent)),
        memory_percent=min(100.0, max(0.0, sample.memory_percent)),
        gpu_percent=min(100.0, sum(g.utilization for g in sample.gpus) / len(sample.gpus))
        if sample.gpus
        else 0.0,
        runtimes=list(config.runtimes),
        attributes=dict(config.attributes),
    )
