"""Run a campaign: a local federation under steady work in every region, faults one after another,
then a settle, the independent check and the table.

Work flows through every region the whole time: each region gets a submission every ``pace``
seconds, mixing every ``--on-node-lost`` policy, jobs sent to another region (at most once and at
least once), a tenant's submissions and cancels. Faults come from :data:`FAULTS` in the order of
``schedule``, ``rounds`` times over, each against the next region in turn (so with three regions
and a schedule whose length is not a multiple of three, each round meets every fault in another
region), with a short random gap between. When the
last fault is undone the load stops, every link is healed, and the run waits until every
acknowledged job has ended (or ``settle`` seconds pass). The trail is then exported with ``fed
audit replay --format jsonl`` (a separate process, as any auditor would), judged by
:mod:`federation.campaign.checker`, and also handed to the federation's own ``fed audit check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from federation.campaign.checker import TERMINAL, Declared, Verdict, check, parse_trail, settled
from federation.campaign.faults import FAULTS, Outcome, Stage
from federation.campaign.history import History, Operation
from federation.errors import ConfigError, FederationError, InvalidRequest, NotFound
from federation.identity import load_credentials
from federation.ops.launcher import Federation, Options, run_fed
from federation.schemas import Semantics

GiB = 1024**3
SHORT = ("kill-leader", "kill-agent", "duplicate-flood", "malformed-flood", "probes", "cut-link", "poison")
FULL = (
    "kill-leader",
    "kill-agent",
    "malformed-flood",
    "pause-leader",
    "duplicate-flood",
    "pause-agent",
    "probes",
    "kill-server",
    "cut-link",
    "poison",
    "pause-hub",
    "revoke-after-restart",
    "blackhole-link",
)


@dataclass
class CampaignOptions:
    """What to run: the federation's shape, the faults in order, the load's pace."""

    state_dir: Path
    regions: tuple[str, ...] = ("eu", "us", "ap")
    agents: int = 2
    schedulers: int = 2
    cpu: int = 4
    memory: int = 8 * GiB
    schedule: tuple[str, ...] = FULL
    rounds: int = 3
    pace: float = 0.3  # seconds between one region's submissions
    gap: tuple[float, float] = (3.0, 8.0)  # seconds between faults
    warmup: float = 10.0
    settle: float = 300.0
    seed: int = 7
    poison_processes: int = 2000
    poison_output: int = 200 * 1024 * 1024
    hub_pause: float = 45.0
    partition: float = 15.0


@dataclass
class Report:
    """A finished campaign: each fault's outcome, the verdict, and the federation's own check."""

    options: CampaignOptions
    outcomes: list[Outcome]
    verdict: Verdict
    own_check: str
    own_check_ok: bool
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every invariant held, every fault's own expectation held, and both checkers agree."""
        return self.verdict.ok and self.own_check_ok and not any(o.problems for o in self.outcomes)

    def table(self) -> str:
        """The report as Markdown: one row per fault, then the totals."""
        rows = [
            "| # | at (s) | fault | target | lasted (s) | recovery | figures | problems |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, o in enumerate(self.outcomes, 1):
            recovery = f"{o.recovery:.1f} s {o.measure}" if o.recovery is not None else f"none ({o.measure})"
            figures = "; ".join(f"{k}: {v:g}" for k, v in o.figures.items()) or "-"
            rows.append(
                f"| {i} | {o.started:.0f} | {o.fault} | {o.target} | {o.lasted:.1f} | {recovery} | "
                f"{figures} | {'; '.join(o.problems) or 'none'} |"
            )
        v = self.verdict
        rows += [
            "",
            "| submitted | acknowledged | finished | unfinished | lost | ran twice (at most once) | "
            "records / ledger versions judged | quarantined | violations | own audit check |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {v.submitted} | {v.acknowledged} | {v.finished} | {v.unfinished} | {v.lost} | "
            f"{v.ran_twice} | {v.records} / {v.ledgers} | {v.quarantined} | {len(v.violations)} | "
            f"{'ok' if self.own_check_ok else 'FAILED'} |",
        ]
        return "\n".join(rows)


async def run(options: CampaignOptions, echo: Callable[[str], None] = print) -> Report:
    """Run the campaign end to end (see the module docstring); the federation is stopped after."""
    began = time.monotonic()
    federation = Federation(
        Options(
            state_dir=options.state_dir / "fed",
            regions=options.regions,
            agents=options.agents,
            capacity={"cpu": options.cpu, "memory": options.memory, "gpu": 0},
            schedulers=options.schedulers,
            chaos=True,
        )
    )
    echo(f"campaign: starting {len(options.regions)} regions in {options.state_dir}")
    await federation.start()
    try:
        tenant_path = await federation.add_identity("tenant", "campaign")
        intruder_path = await federation.add_identity("tenant", "intruder")
        if tenant_path is None or intruder_path is None:
            raise ConfigError("the campaign needs authentication on")
        rng = random.Random(options.seed)
        stage = Stage(
            federation=federation,
            history=History(options.state_dir / "runs"),
            rng=rng,
            tenant=load_credentials(tenant_path),
            intruder=load_credentials(intruder_path),
            begun=began,
            poison_processes=options.poison_processes,
            poison_output=options.poison_output,
            hub_pause=options.hub_pause,
            partition=options.partition,
        )
        outcomes = await _faults_under_load(stage, options, echo)
        echo("campaign: load stopped; waiting for every acknowledged job to end")
        await _settle(stage, options.settle)
        state = options.state_dir / "fed"
        checked = await asyncio.to_thread(run_fed, state, "audit", "check", timeout=600)
        exported, trail = await _export(stage, state)
        declared = {
            node: Declared(options.cpu, options.memory, 0)
            for region in options.regions
            for node in federation.node_names(region)
        }
        verdict = check(stage.history.operations, stage.history.markers(), trail, declared)
        if exported.returncode:
            why = f"exited {exported.returncode}: {exported.stderr}"
            verdict.violations.append(f"export: fed audit replay {why}")
        own = checked.stdout + checked.stderr
        report = Report(options, outcomes, verdict, own, checked.returncode == 0, time.monotonic() - began)
        report.files = _keep(options.state_dir, stage.history, exported.stdout, report)
        return report
    finally:
        await federation.stop()


async def _faults_under_load(
    stage: Stage, options: CampaignOptions, echo: Callable[[str], None]
) -> list[Outcome]:
    stop = asyncio.Event()
    loads = [asyncio.create_task(_load(stage, region, options.pace, stop)) for region in options.regions]
    outcomes = []
    try:
        await asyncio.sleep(options.warmup)  # sleep-ok: work flows before the first fault
        faults = [name for _ in range(options.rounds) for name in options.schedule]
        for i, name in enumerate(faults):
            region = options.regions[i % len(options.regions)]
            started = time.monotonic() - stage.begun
            echo(f"campaign: [{i + 1}/{len(faults)}] {name} ({region}) at {started:.0f} s")
            try:
                outcome = await FAULTS[name](stage, region)
            except (FederationError, OSError, TimeoutError) as exc:
                outcome = Outcome(name, region, problems=[f"the fault itself failed: {exc}"])
            outcome.started = started
            if not outcome.lasted:
                outcome.lasted = time.monotonic() - stage.begun - started
            outcomes.append(outcome)
            recovery = f"{outcome.recovery:.1f} s" if outcome.recovery is not None else "not measured"
            echo(
                f"campaign:   {outcome.measure or 'done'}: {recovery}; problems: {outcome.problems or 'none'}"
            )
            await asyncio.sleep(stage.rng.uniform(*options.gap))  # sleep-ok: the gap between faults
    finally:
        stop.set()
        stage.federation.chaos("heal")
        ended = await asyncio.gather(*loads, return_exceptions=True)
    failed = [f"{region}: {exc!r}" for region, exc in zip(options.regions, ended, strict=True) if exc]
    if failed:
        outcomes.append(Outcome("load", "every region", problems=[f"a load loop died: {f}" for f in failed]))
    return outcomes


async def _load(stage: Stage, region: str, pace: float, stop: asyncio.Event) -> None:
    """Submissions to ``region`` every ``pace`` seconds until ``stop``, in a fixed mix; every
    fifteenth job runs 5 s and is cancelled three submissions later, while it runs."""
    others = [r for r in stage.regions if r != region] or [region]
    clients = Clients(stage)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            semantics: Semantics = "at_most_once"
            policy, regions = "", list[str]()
            match i % 8:
                case 1:
                    policy = "replace"
                case 2:
                    policy = "wait=5s"
                case 3:
                    regions = [others[i % len(others)]]
                case 4:
                    regions, semantics = [others[i % len(others)]], "at_least_once"
            client = clients.tenant if i % 8 == 5 else clients.operator
            operation = stage.history.add(
                Operation(
                    "submit",
                    f"{region}-{i}",
                    region,
                    time.time(),
                    at_most_once=not policy and semantics == "at_most_once",
                    policy=policy,
                    tenant=client.tenant or "default",
                    regions=regions,
                )
            )
            command = stage.history.command(5.0 if i % 15 == 0 else 0.3)
            await clients.call(
                operation,
                client.submit(
                    command,
                    region=region,
                    job_id=operation.job,
                    on_node_lost=policy,
                    regions=regions,
                    semantics=semantics,
                ),
            )
            if i % 15 == 3 and i > 15:  # the long job of three submissions ago, running by now
                job = f"{region}-{i - 3}"
                cancel = stage.history.add(Operation("cancel", job, region, time.time()))
                await clients.call(cancel, clients.operator.cancel(job, region=region))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pace):
                    await stop.wait()
    finally:
        await clients.close()


class Clients:
    """A load loop's two clients (the operator's and the tenant's), started afresh after an error
    that may have left a connection gone for good (a region's server killed)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.operator, self.tenant = stage.client(), stage.client(stage.tenant)

    async def call(self, operation: Operation, call: Coroutine[Any, Any, object]) -> None:
        """Run one operation's call and record its acknowledgement: ``ok``; ``refused`` when the
        error says nothing was stored; else ``unknown`` (it may have been)."""
        try:
            async with asyncio.timeout(40):
                await call
        except (InvalidRequest, NotFound) as exc:
            operation.ack, operation.error = "refused", str(exc)
            return
        except (FederationError, OSError, TimeoutError) as exc:
            operation.error = str(exc) or type(exc).__name__
            await self.close()
            self.operator, self.tenant = self.stage.client(), self.stage.client(self.stage.tenant)
            return
        operation.acknowledged()

    async def close(self) -> None:
        """Close both clients."""
        for client in (self.operator, self.tenant):
            with contextlib.suppress(Exception):
                await client.close()


async def _settle(stage: Stage, deadline: float) -> None:
    """Wait until every acknowledged job has ended; write each one's outcome into the history."""
    acknowledged = {o.job for o in stage.history.submissions("ok")}
    end = time.monotonic() + deadline
    states: dict[str, str] = {}
    async with stage.client() as fed:
        while time.monotonic() < end:
            with contextlib.suppress(FederationError, OSError, TimeoutError):
                states = {r.id: r.state for r in await fed.jobs()}
                if all(states.get(job) in TERMINAL for job in acknowledged):
                    break
            await asyncio.sleep(2.0)  # sleep-ok: the poll interval of a condition wait
    for operation in stage.history.submissions("ok"):
        operation.outcome = states.get(operation.job, "") if states.get(operation.job) in TERMINAL else ""


async def _export(
    stage: Stage, state: Path, deadline: float = 60.0
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The audit trail as ``fed audit replay --format jsonl`` exports it, once it shows every
    outcome the clients read (the audit stream copies asynchronously), or after ``deadline``."""
    end = time.monotonic() + deadline
    while True:
        args = ("audit", "replay", "--format", "jsonl")
        exported = await asyncio.to_thread(run_fed, state, *args, timeout=600)
        trail = parse_trail(exported.stdout.splitlines())
        if exported.returncode or not settled(stage.history.operations, trail) or time.monotonic() > end:
            return exported, trail
        await asyncio.sleep(2.0)  # sleep-ok: the poll interval of a condition wait


def _keep(directory: Path, history: History, trail: str, report: Report) -> dict[str, str]:
    """Write the history, the exported trail and the report beside the run; their paths."""
    files = {
        "history": directory / "history.jsonl",
        "trail": directory / "trail.jsonl",
        "report": directory / "report.md",
        "verdict": directory / "verdict.json",
    }
    history.dump(files["history"])
    files["trail"].write_text(trail)
    files["report"].write_text(report.table() + "\n")
    files["verdict"].write_text(json.dumps(asdict(report.verdict), indent=1) + "\n")
    return {name: str(path) for name, path in files.items()}
