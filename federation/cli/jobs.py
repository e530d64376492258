"""A job's commands: ``fed submit``, ``fed jobs``, ``fed job``, ``fed explain``, ``fed logs``,
``fed get`` and ``fed cancel``; and the shell status a followed job exits with (``submit --wait``,
``logs -f``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation import tracing
from federation.cli.common import amounts, common_options, pairs, parse_array, print_json, state_dir
from federation.cli.jobfiles import read_script, read_toml
from federation.cli.progress import Progress
from federation.errors import InvalidRequest
from federation.resources import format_memory, parse_duration, parse_memory
from federation.schemas import TERMINAL_STATES, JobRecord

if TYPE_CHECKING:
    from federation.client import Client


def exit_status(record: JobRecord) -> int:
    """The shell status ``fed submit --wait`` exits with for a terminal job."""
    if record.state == "succeeded":
        return 0
    if record.exit_code is not None and record.exit_code != 0:
        return 128 - record.exit_code if record.exit_code < 0 else min(record.exit_code, 255)
    return 130 if record.state == "cancelled" else 1


async def cmd_submit(args: argparse.Namespace) -> int:
    from federation.client import Client

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.file and Path(args.file).suffix == ".toml":
        if command:
            raise InvalidRequest("a TOML job file names its commands: give either --file or a command")
        return await _submit_workflow(args, read_toml(Path(args.file)))
    if args.file:  # a script: its #FED lines are options (the command line's win), its text the job
        args, command = _with_script(args, Path(args.file), command)
    if not command:
        raise InvalidRequest("nothing to run: give the command after --, e.g. fed submit -- echo hi")
    options = {
        "region": args.region,
        "cpu": args.cpu,
        "memory": parse_memory(args.memory),
        "gpu": args.gpu,
        "priority": args.priority,
        "nodes": args.node or (),
        "tenant": args.tenant,
        "env": pairs(args.env or [], "--env"),
        "require": pairs(args.require or [], "--require"),
        "scoring": args.scoring or "",
        "max_attempts": args.max_attempts,
        "gang": args.gang,
        "custom": amounts(args.resource or [], "--resource"),
        "on_node_lost": args.on_node_lost or "",
        "regions": [r.strip() for r in (args.regions or "").split(",") if r.strip()],
        "semantics": "at_least_once" if args.retry_anywhere else "at_most_once",
        "timeout": parse_duration(args.timeout) if args.timeout else 0.0,
        "after": args.after or [],
        "inputs": args.input or [],
        "outputs": args.output or [],
    }
    array = parse_array(args.array) if args.array else None  # a bad spec is refused before connecting
    uploads = Progress()  # drawn on a terminal while input files are stored

    def uploading(name: str, done: int, total: int) -> None:
        uploads.show(f"uploading inputs: {format_memory(done)} of {format_memory(total)} ({name})")
        if done == total:
            uploads.clear()

    options["uploading"] = uploading
    async with Client.connect(state_dir(args)) as fed:
        if array is not None:
            return await _submit_array(fed, args, command, options, *array)
        job = await fed.submit(command, job_id=args.id, **options)
        submitted = {"id": job.id, "region": job.region, "subject": job.subject}
        if not args.wait:
            if args.json:
                return print_json(submitted)
            print(job.id)
            return 0
        print(f"submitted {job.id} to {job.region}; waiting", file=sys.stderr)
        with _following(job.id):
            async with Progress().ticking() as progress:

                def changed(seen: JobRecord) -> None:  # each state the job goes through, drawn
                    progress.show(f"{seen.id}: {seen.state} ({seen.reason or seen.state})"[:160], force=True)

                record = await job.wait(on_change=changed)
            if args.json:  # the record instead of the output: stdout is one JSON document
                print_json({**submitted, "record": record})
            else:
                async for chunk in fed.logs(job.id, region=job.region):
                    sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return _ended(record)


async def _submit_array(
    fed: Client,
    args: argparse.Namespace,
    command: list[str],
    options: dict[str, Any],
    indices: list[int],
    limit: int,
) -> int:
    """``fed submit --array``: store every element (drawing how many on a terminal), then print
    the array's id, or with ``--wait`` wait for all and exit 0 only if every element succeeded."""
    async with Progress().ticking() as progress:

        def stored(done: int, total: int) -> None:
            progress.show(f"submitting {total} jobs: {done} stored")

        array = await fed.submit_array(
            command, indices, limit=limit, array_id=args.id, progress=stored, **options
        )
    submitted = {
        "array": array.id,
        "region": array.region,
        "jobs": len(indices),
        "first": f"{array.id}-{indices[0]}",
        "last": f"{array.id}-{indices[-1]}",
        "limit": limit,
    }
    if not args.wait:
        if args.json:
            return print_json(submitted)
        print(array.id)
        return 0
    print(f"submitted array {array.id} ({len(indices)} jobs) to {array.region}; waiting", file=sys.stderr)
    with _following(array.id):
        async with Progress().ticking() as progress:

            def changed(records: list[JobRecord]) -> None:
                progress.show(f"array {array.id}: {_tally(records, len(indices))}", force=True)

            records = await array.wait(on_change=changed)
    failed = sorted((r for r in records if r.state != "succeeded"), key=lambda r: (r.updated_at, r.id))
    if args.json:
        print_json({**submitted, "states": _states(records), "failed": [r.id for r in failed]})
    if not failed:
        print(f"array {array.id}: all {len(records)} jobs succeeded", file=sys.stderr)
        return 0
    first = failed[0]
    print(
        f"array {array.id}: {len(failed)} of {len(records)} jobs did not succeed; the first, {first.id}: "
        f"{first.state} ({first.reason})",
        file=sys.stderr,
    )
    return exit_status(first)


def _with_script(
    args: argparse.Namespace, path: Path, extra: list[str]
) -> tuple[argparse.Namespace, list[str]]:
    """``args`` with the options of the script's ``#FED`` lines, except those the command line
    gave itself (as Slurm's command line wins over ``#SBATCH``; repeated options: the script's,
    then the command line's); the command that runs the script's text, ``extra`` its arguments."""
    flags, command = read_script(path)
    parser = argparse.ArgumentParser(
        prog=f"#FED line of {path}", parents=[common_options()], exit_on_error=False, add_help=False
    )
    submit_arguments(parser)
    try:
        script = parser.parse_args(flags)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise InvalidRequest(f"{path}: a #FED line does not parse: {exc}") from None
    if script.command or script.file:
        raise InvalidRequest(f"{path}: #FED lines give options only (the script is the command)")
    unset = object()  # what the command line did not say
    parser.set_defaults(**dict.fromkeys(vars(script), unset))
    argv = list(getattr(args, "argv", []))
    given = vars(parser.parse_known_args(argv[argv.index("submit") + 1 :] if "submit" in argv else [])[0])
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(script).items():
        if key in ("command", "file"):
            continue
        if isinstance(value, list):
            setattr(merged, key, [*value, *(getattr(args, key, None) or [])])
        elif given.get(key, unset) is unset:
            setattr(merged, key, value)
    return merged, [*command, *extra]


async def _submit_workflow(args: argparse.Namespace, jobs: dict[str, dict[str, Any]]) -> int:
    """``fed submit --file jobs.toml``: every job of the file, in dependency order (nothing at all
    when any of it is wrong); with ``--wait``, wait for all, exit 0 only if all succeeded."""
    from federation.client import Client, JobArray

    async with Client.connect(state_dir(args)) as fed:
        submitted = await fed.submit_workflow(jobs, region=args.region)
        listing = {
            name: {"id": job.id, "region": job.region, "array": isinstance(job, JobArray)}
            for name, job in submitted.items()
        }
        if not args.wait:
            if args.json:
                return print_json({"jobs": listing})
            for name, job in submitted.items():
                kind = f"array of {len(job.indices)}" if isinstance(job, JobArray) else "job"
                print(f"{name:<20} {job.id}  ({kind} in {job.region})")
            return 0
        print(f"submitted {len(submitted)} jobs; waiting", file=sys.stderr)
        finals: dict[str, list[JobRecord]] = {}
        for name, job in submitted.items():
            finals[name] = await job.wait() if isinstance(job, JobArray) else [await job.wait()]
    failed = sorted(
        ((name, r) for name, records in finals.items() for r in records if r.state != "succeeded"),
        key=lambda item: (item[1].updated_at, item[1].id),
    )
    if args.json:
        print_json({"jobs": listing, "states": {n: _states(rs) for n, rs in finals.items()}})
    for name, records in finals.items():
        print(f"{name:<20} {', '.join(f'{k} {v}' for k, v in _states(records).items())}", file=sys.stderr)
    return exit_status(failed[0][1]) if failed else 0


def _states(records: list[JobRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in records:
        out[record.state] = out.get(record.state, 0) + 1
    return dict(sorted(out.items()))


def _tally(records: list[JobRecord], total: int) -> str:
    """``120 of 200 done (3 failed); running 10, pending 70``."""
    done = sum(r.terminal for r in records)
    bad = sum(r.terminal and r.state != "succeeded" for r in records)
    live = ", ".join(f"{k} {v}" for k, v in _states(records).items() if k not in TERMINAL_STATES)
    return f"{done} of {total} done" + (f" ({bad} failed)" if bad else "") + (f"; {live}" if live else "")


def _ended(record: JobRecord) -> int:
    """Say how a followed job ended (on stderr); the status to exit with."""
    print(f"{record.id}: {record.state} ({record.reason})", file=sys.stderr)
    return exit_status(record)


@contextlib.contextmanager
def _following(job: str) -> Iterator[None]:
    """Ctrl-C while following a job stops the following, not the job: say so on the way out."""
    try:
        yield
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(
            f"\nfed: stopped following {job}; the job goes on "
            f"(fed logs -f {job} follows it again, fed cancel {job} stops it)",
            file=sys.stderr,
        )
        raise


def _job_line(record: JobRecord) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(record.submitted_at))
    code = "" if record.exit_code is None else str(record.exit_code)
    return (
        f"{record.id:<26} {record.region:<10} {record.state:<10} {code:>4} {record.node or '-':<16} {when}  "
        f"{' '.join(record.spec.command)[:50]}"
    )


async def cmd_jobs(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        if args.array:
            return _array_summary(args, await fed.array(args.array, region=args.region))
        if args.limit < 0:
            raise InvalidRequest(f"--limit must be 0 (every job) or more, not {args.limit}")
        cursor: dict[str, int] = {}
        if args.limit == 0:
            records = await fed.jobs(region=args.region, state=args.state)
        else:
            before = parse_cursor(args.before) if args.before else None
            page = await fed.jobs_page(region=args.region, state=args.state, limit=args.limit, cursor=before)
            records, cursor = page.records, page.cursor
    if args.json:
        print_json(records)
    else:
        print(f"{'JOB':<26} {'REGION':<10} {'STATE':<10} {'EXIT':>4} {'NODE':<16} SUBMITTED COMMAND")
        for record in records:
            print(_job_line(record))
    if cursor:  # on stderr: the listing itself (and --json's array) stays what it was
        again = [f"--{name} {value}" for name in ("region", "state") if (value := getattr(args, name))]
        print(
            f"(the {len(records)} most recently changed; the next {args.limit}: fed jobs "
            + " ".join([*again, f"--limit {args.limit}", f"--before {format_cursor(cursor)}"])
            + ")",
            file=sys.stderr,
        )
    return 0


def format_cursor(cursor: dict[str, int]) -> str:
    """A page cursor as ``fed jobs --before`` takes it: ``region:sequence,...``."""
    return ",".join(f"{region}:{sequence}" for region, sequence in sorted(cursor.items()))


def parse_cursor(text: str) -> dict[str, int]:
    """``region:sequence,...`` (what a page printed) as a cursor; InvalidRequest otherwise."""
    cursor: dict[str, int] = {}
    for part in text.split(","):
        region, _, sequence = part.partition(":")
        if not region or not sequence.isdigit() or int(sequence) < 1:
            raise InvalidRequest(
                f"--before {text!r}: expected what a page printed, region:sequence[,region:sequence...]"
            )
        cursor[region] = int(sequence)
    return cursor


def _array_summary(args: argparse.Namespace, records: list[JobRecord]) -> int:
    """``fed jobs --array ID``: the array's elements counted by state (and, with ``--state``, the
    elements in that state listed)."""
    if not records:
        raise InvalidRequest(f"no job array {args.array} in {args.region or 'any region'}")
    listed = [r for r in records if r.state == args.state] if args.state else []
    if args.json:
        return print_json(
            {
                "array": args.array,
                "jobs": len(records),
                "states": _states(records),
                "limit": records[0].spec.array_limit,
                "regions": sorted({r.region for r in records}),
                **({"records": listed} if args.state else {}),
            }
        )
    limit = records[0].spec.array_limit
    print(
        f"array {args.array}: {len(records)} jobs"
        + (f", at most {limit} at once" if limit else "")
        + f"; in {', '.join(sorted({r.region for r in records}))}"
    )
    for state, count in _states(records).items():
        print(f"  {state:<10} {count}")
    if listed:
        print(f"{'JOB':<26} {'REGION':<10} {'STATE':<10} {'EXIT':>4} {'NODE':<16} SUBMITTED COMMAND")
        for record in listed[-args.limit :] if args.limit else listed:
            print(_job_line(record))
    return 0


async def cmd_job(args: argparse.Namespace) -> int:
    from federation.client import Client, request_text

    async with Client.connect(state_dir(args)) as fed:
        home = await fed.job(args.job, region=args.region)
        record = home if args.json else await fed.where(args.job, region=home.region)
    if args.json:
        return print_json(record)
    spec = record.spec
    print(f"job       {record.id}")
    print(f"region    {record.region}" + (f" (handed over by {spec.origin})" if spec.origin else ""))
    if record.region != home.region:  # forwarded: where() read the record of the region that ran it
        print(f"home      {home.region}: {home.reason}")
    print(
        f"state     {record.state}"
        + (f" (exit code {record.exit_code})" if record.exit_code is not None else "")
    )
    print(f"why       {record.reason or '-'}")
    print(f"node      {record.node or '-'} (attempt {record.attempt})")
    print(f"command   {' '.join(spec.command)}")
    print(f"request   {request_text(spec)} priority={spec.priority} tenant={spec.tenant}")
    if record.usage is not None:
        u = record.usage
        print(
            f"usage     cpu {u.cpu_seconds:g} s  peak memory {format_memory(u.peak_memory_bytes)}  "
            f"wall {u.wall_seconds:g} s  gpu {u.gpu_seconds:g} s  (measured by {u.measured_by})"
        )
    for ref in spec.inputs:
        print(f"input     {ref.name} ({format_memory(ref.size)}, from {spec.origin or record.region})")
    if spec.outputs:
        kept = ", ".join(f"{ref.name} ({format_memory(ref.size)})" for ref in record.stored) or "-"
        print(f"outputs   {' '.join(spec.outputs)}: stored {kept}")
    if record.traceparent:
        print(f"trace     {tracing.trace_id(record.traceparent)}")
    print("history")
    for step in record.history:
        when = time.strftime("%H:%M:%S", time.localtime(step.at)) + f".{int(step.at * 1000) % 1000:03d}"
        print(f"  {when}  {step.state:<10} {step.reason}")
    return 0


async def cmd_explain(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        explanation = await fed.explain(args.job, region=args.region)
    if args.json:
        return print_json(explanation)
    for line in explanation.lines():
        print(line)
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        if not args.follow:
            async for chunk in fed.logs(args.job, region=args.region):
                sys.stdout.buffer.write(chunk)
            return 0
        with _following(args.job):
            async for chunk in fed.logs(args.job, region=args.region, follow=True):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            record = await fed.where(args.job, region=args.region)
    return _ended(record)  # followed to the end: the job's own status, as fed submit --wait


def _target(output: str | None, name: str | None) -> Path:
    """Where ``fed get`` writes output file ``name``: ``-o PATH`` (in it, if a directory), else here."""
    target = Path(output or name or ".")
    return target / name if name and target.is_dir() else target


async def cmd_get(args: argparse.Namespace) -> int:
    from federation.client import Client

    target = _target(args.output, args.name)
    async with Client.connect(state_dir(args)) as fed:
        if args.name is None:  # the files the job stored
            record, stored = await fed.outputs(args.job, region=args.region)
            if args.json:
                return print_json({"id": record.id, "region": record.region, "stored": stored})
            for ref in stored:
                print(f"{ref.name:<40} {format_memory(ref.size):>10}  {ref.digest}")
            if not stored:
                print(f"job {record.id} ({record.state}) stored no output files", file=sys.stderr)
            return 0
        if args.output == "-":
            async for chunk in fed.read_output(args.job, args.name, region=args.region):
                sys.stdout.buffer.write(chunk)  # checked at the end: a mismatch fails the command
            sys.stdout.flush()
            return 0
        ref = await fed.get_file(args.job, args.name, target, region=args.region)
    print(f"{target} ({format_memory(ref.size)}, {ref.digest})", file=sys.stderr)
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        await fed.cancel(args.job, region=args.region, reason=args.reason)
    if args.json:
        return print_json({"id": args.job, "cancel_requested": True, "reason": args.reason})
    print(f"cancel requested for {args.job}")
    return 0


def add_submit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``submit`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "submit", parents=[common], help="submit a workload: fed submit [options] -- CMD ARGS..."
    )
    submit_arguments(p)
    p.set_defaults(func=cmd_submit)


def submit_arguments(p: argparse.ArgumentParser) -> None:
    """``fed submit``'s options (also what a script's ``#FED`` lines may say)."""
    p.add_argument("--region", help="home region (default: the federation's first)")
    p.add_argument("--cpu", type=int, default=1, help="whole cores (default 1)")
    p.add_argument("--memory", default="0", help="memory, e.g. 512MiB (default 0)")
    p.add_argument("--gpu", type=int, default=0, help="whole GPUs (default 0)")
    p.add_argument("--priority", default="medium", choices=["urgent", "high", "medium", "low"])
    p.add_argument("--node", action="append", help="preferred node: used first when it fits (repeat)")
    p.add_argument(
        "--require",
        action="append",
        help="required node label KEY=VALUE (repeat; VALUE may list alternatives a,b; node=NAME pins a node)",
    )
    p.add_argument("--scoring", choices=["binpack", "spread"], help="override the region's scoring")
    p.add_argument(
        "--gang", type=int, default=1, help="N allocations of the request, started all together or none"
    )
    p.add_argument("--resource", action="append", help="custom resource NAME=AMOUNT the job needs (repeat)")
    p.add_argument(
        "--max-attempts", type=int, default=0, help="attempts before failing (default: region policy)"
    )
    p.add_argument(
        "--timeout", help="wall-clock limit of each attempt, e.g. 30s or 2h: its processes are then stopped"
    )
    p.add_argument(
        "--on-node-lost",
        metavar="POLICY",
        help="when the job's node stops heartbeating: replace (run again elsewhere, at least once), "
        "wait=DURATION (keep it that long, e.g. wait=5m, then replace) or fail (end it lost); "
        "default: the region's policy (fail)",
    )
    p.add_argument(
        "--regions",
        metavar="any|R1,R2",
        help="where the job may run: 'any' (the default: home region first, then any other) or a "
        "list of regions (home first if listed); a job that fits nowhere at home is offered to the "
        "best allowed region by its capacity summary",
    )
    semantics = p.add_mutually_exclusive_group()
    semantics.add_argument(
        "--once",
        action="store_true",
        help="at most once (the default): a hand-off to another region whose answer is lost holds "
        "the job until that region answers; it never runs twice",
    )
    semantics.add_argument(
        "--retry-anywhere",
        action="store_true",
        help="at least once: after an unanswered hand-off the job may run elsewhere; a duplicate "
        "run is recorded on the job",
    )
    p.add_argument("--tenant", default="default")
    p.add_argument("--env", action="append", help="environment variable KEY=VALUE for the job (repeat)")
    p.add_argument("--id", help="job id (default: generated); resubmitting an id is a no-op")
    p.add_argument(
        "--after",
        action="append",
        metavar="ID[:ok|failed|any]",
        help="start only after job (or job array) ID ended successfully (:ok, the default), "
        "unsuccessfully (:failed) or at all (:any), in any region; if it ends the other way this job "
        "is cancelled, saying why; repeat for several; an unknown ID is refused",
    )
    p.add_argument(
        "--array",
        metavar="SPEC",
        help="a job array (as Slurm's): one job per index, e.g. 0-999, 1,3,5-9 or 0-99:10 (every 10th), "
        "%%N for at most N at once (0-999%%50); each job is <array id>-<index> and gets FED_ARRAY_ID and "
        "FED_ARRAY_INDEX; prints the array's id (--id names it); --wait waits for all and exits 0 only if "
        "all succeeded",
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="PATH[:NAME]",
        help="a local file the job reads: uploaded to the home region's object store before the job is "
        "submitted, put into the job's directory as NAME (default: the file's name) before it starts, "
        "in whichever region it runs (repeat)",
    )
    p.add_argument(
        "--output",
        action="append",
        metavar="NAME",
        help="a file (glob allowed, e.g. '*.csv') the job leaves in its directory: stored when it exits, "
        "read with fed get JOB NAME (repeat)",
    )
    p.add_argument("--wait", action="store_true", help="wait, print the output, exit with the job's status")
    p.add_argument(
        "--json",
        action="store_true",
        help='{"id", "region", "subject"} as JSON; with --wait, the final "record" too instead of the output',
    )
    p.add_argument(
        "--file",
        metavar="PATH",
        help="a job file: TOML (one job, or a workflow of [jobs.NAME] that may name each other in after; "
        "checked whole before anything is sent) or a script whose #FED lines hold these options (the "
        "script's text is the job); see the README's Job files",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")


def add_query_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jobs``, ``job``, ``explain`` and ``logs`` to the ``fed`` subcommands."""
    p = sub.add_parser("jobs", parents=[common], help="list jobs")
    p.add_argument("--region")
    p.add_argument("--state", help="only jobs in this state (pending, placed, running, succeeded, ...)")
    p.add_argument(
        "--array", metavar="ID", help="a job array's jobs counted by state (with --state, those listed)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        help="a page of the N most recently changed jobs (default 100), read from the newest writes "
        "however many jobs there are; 0: every job (reads every record)",
    )
    p.add_argument(
        "--before",
        metavar="CURSOR",
        help="the next page: the cursor the previous page printed (region:sequence,...)",
    )
    p.add_argument("--json", action="store_true", help="JSON array of job records")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", parents=[common], help="one job: state, why, history")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="the job record as JSON")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("explain", parents=[common], help="why a job is pending, or why it went where it did")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="record, decision and queue position as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("logs", parents=[common], help="a job's output")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep reading until the job ends, then exit with its status (as fed submit --wait)",
    )
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "get",
        parents=[common],
        help="an output file a job stored (--output): written to NAME here, or -o PATH (- for stdout); "
        "without NAME, the files it stored",
    )
    p.add_argument("job")
    p.add_argument("name", nargs="?", help="the output file's name (as the job left it in its directory)")
    p.add_argument("-o", "--output", metavar="PATH", help="where to write it (a directory, a file, or -)")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="without NAME: the stored files as JSON")
    p.set_defaults(func=cmd_get)


def add_cancel_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``cancel`` to the ``fed`` subcommands."""
    p = sub.add_parser("cancel", parents=[common], help="cancel a job (kills its whole process tree)")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--reason", default="cancelled by user")
    p.add_argument("--json", action="store_true", help='{"id", "cancel_requested", "reason"} as JSON')
    p.set_defaults(func=cmd_cancel)
