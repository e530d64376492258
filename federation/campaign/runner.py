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
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from federation.campaign.checker import TERMINAL, Declared, Verdict, check, parse_trail
from federation.campaign.faults import FAULTS, Outcome, Stage
from federation.campaign.history import History, Operation
from federation.errors import FederationError, InvalidRequest
from federation.keyring import load_credentials
from federation.launcher import Federation, Options, fed_command

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
            raise FederationError("the campaign needs authentication on")
        rng = random.Random(options.seed)
        stage = Stage(
            federation=federation,
            history=History(options.state_dir / "runs"),
            rng=rng,
            tenant=load_credentials(tenant_path),
            intruder=load_credentials(intruder_path),
            begun=began,
            scratch=options.state_dir,
            poison_processes=options.poison_processes,
            poison_output=options.poison_output,
            hub_pause=options.hub_pause,
            partition=options.partition,
        )
        outcomes = await _faults_under_load(stage, options, echo)
        echo("campaign: load stopped; waiting for every acknowledged job to end")
        await _settle(stage, options.settle)
        own_ok, own = await asyncio.to_thread(_fed, options.state_dir, "audit", "check")
        exported = await asyncio.to_thread(_fed, options.state_dir, "audit", "replay", "--format", "jsonl")
        trail = parse_trail(exported[1].splitlines())
        declared = {
            node: Declared(options.cpu, options.memory, 0)
            for region in options.regions
            for node in federation.node_names(region)
        }
        verdict = check(stage.history.operations, stage.history.markers(), trail, declared)
        report = Report(options, outcomes, verdict, own, own_ok, time.monotonic() - began)
        report.files = _keep(options.state_dir, stage.history, exported[1], report)
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
        await asyncio.gather(*loads)
        stage.federation.chaos("heal")
    return outcomes


async def _load(stage: Stage, region: str, pace: float, stop: asyncio.Event) -> None:
    """Submissions to ``region`` every ``pace`` seconds until ``stop``, in a fixed mix."""
    others = [r for r in stage.regions if r != region] or [region]
    operator, tenant = stage.client(), stage.client(stage.tenant)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            job = f"{region}-{i}"
            policy, semantics, regions, client = "", "at_most_once", [], operator
            match i % 8:
                case 1:
                    policy = "replace"
                case 2:
                    policy = "wait=5s"
                case 3:
                    regions = [others[i % len(others)]]
                case 4:
                    regions, semantics = [others[i % len(others)]], "at_least_once"
                case 5:
                    client = tenant
            operation = stage.history.add(
                Operation(
                    "submit",
                    job,
                    region,
                    time.time(),
                    at_most_once=not policy and semantics == "at_most_once",
                    policy=policy,
                    tenant=client.tenant or "default",
                    regions=regions,
                )
            )
            try:
                async with asyncio.timeout(40):
                    await client.submit(
                        stage.history.command(),
                        region=region,
                        job_id=job,
                        on_node_lost=policy,
                        regions=regions,
                        semantics=semantics,  # type: ignore[arg-type]
                    )
                operation.ack, operation.acked_at = "ok", time.time()
                if i % 15 == 0:
                    cancel = stage.history.add(Operation("cancel", job, region, time.time()))
                    await client.cancel(job, region=region)
                    cancel.ack, cancel.acked_at = "ok", time.time()
            except InvalidRequest as exc:
                operation.ack, operation.error = "refused", str(exc)
            except (FederationError, OSError, TimeoutError) as exc:
                operation.error = str(exc) or type(exc).__name__  # may or may not be stored: "unknown"
                for old in (operator, tenant):  # its connection may be gone for good: start afresh
                    with contextlib.suppress(Exception):
                        await old.close()
                operator, tenant = stage.client(), stage.client(stage.tenant)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pace)
    finally:
        for client in (operator, tenant):
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


def _fed(state_dir: Path, *args: str) -> tuple[bool, str]:
    """Run ``fed ARGS`` against the campaign's federation (as its operator); (exit 0, stdout)."""
    env = {k: v for k, v in os.environ.items() if k != "FED_CREDS"}
    env["FED_STATE_DIR"] = str(state_dir / "fed")
    done = subprocess.run(fed_command(*args), env=env, capture_output=True, text=True, timeout=600)
    return done.returncode == 0, done.stdout + (done.stderr if done.returncode else "")


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
