"""Jobs' files without I/O: what a submission may name (its own tenant's objects, usable file
names), what the core hands the agent (inputs, the store that holds them, the outputs and their
bound) and keeps on the record (the outputs an ``exited`` report stored), an object read back
checked against its description, and which files of a directory are outputs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.data import find_outputs
from federation.bus.objects import ObjectError, digest, verified
from federation.core.events import JobReported, WriteLedger
from federation.errors import InvalidRequest, RemoteProtocolError
from federation.inputs import digest as commands_digest
from federation.schemas import (
    JobEvent,
    JobRecord,
    ObjectRef,
    Submit,
    check_file_name,
    decode_workload,
    encode,
)
from tests.core.test_region_core import settle, submit, two_nodes_one_job

SUM = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(b"hello\n").digest()).decode()


def ref(name: str = "in.txt", obj: str = "in.acme.k1", size: int = 6, sha: str = SUM) -> ObjectRef:
    return ObjectRef(name=name, object=obj, size=size, digest=sha)


def accepted(spec: Submit, tenant: str = "acme") -> Submit:
    message = decode_workload(encode(spec), kind="submit", job=spec.id, tenant=tenant, region="eu")
    assert isinstance(message, Submit)
    return message


def test_a_submission_names_its_own_tenants_objects_under_usable_names() -> None:
    assert accepted(Submit(id="j", command=["x"], tenant="acme", inputs=[ref()])).inputs == [ref()]
    with pytest.raises(InvalidRequest, match="one path component"):
        check_file_name("a/b")
    assert check_file_name("train-1.csv") == "train-1.csv"


@pytest.mark.parametrize(
    ("inputs", "why"),
    [
        ([ref(obj="in.blue.k1")], "is not tenant acme's"),
        ([ref(obj="out.acme.k1")], "is not tenant acme's"),
        ([ref(name="..")], "one path component"),
        ([ref(), ref(obj="in.acme.k2")], "the same file name"),
    ],
)
def test_a_submission_naming_anothers_object_or_a_bad_name_is_refused(
    inputs: list[ObjectRef], why: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        accepted(Submit(id="j", command=["x"], tenant="acme", inputs=inputs))


def test_the_allocation_carries_inputs_their_store_and_outputs_only_for_jobs_with_data() -> None:
    core = two_nodes_one_job(max_output_bytes=5000)
    core.handle(submit("plain"))
    core.handle(submit("data", inputs=[ref(obj="in.default.k1")], outputs=["*.csv"], origin="us"))
    allocations = {a.job: a for c in settle(core) if isinstance(c, WriteLedger) for a in c.ledger.allocations}
    plain, data = allocations["plain"], allocations["data"]
    assert (plain.inputs, plain.store, plain.outputs, plain.output_bytes) == ((), "", (), 0)
    assert b"store" not in encode(plain.__class__(job="x", attempt=1))  # no byte more for jobs without data
    assert data.inputs == (ref(obj="in.default.k1"),)
    assert data.store == "us"  # handed over: its inputs are in the home region's store
    assert (data.outputs, data.output_bytes) == (("*.csv",), 5000)


def test_the_outputs_an_exit_report_stored_are_kept_on_the_record() -> None:
    core = two_nodes_one_job()
    core.handle(submit("j1", outputs=["out.txt"]))
    settle(core)
    node = core.jobs["j1"].record.node
    out = ref(name="out.txt", obj=f"out.{node}.k9")
    report = JobEvent(
        node=node, job="j1", attempt=1, kind="exited", exit_code=0, at=12.0, started_at=11.5, stored=[out]
    )
    core.handle(JobReported(event=report))
    record = core.jobs["j1"].record
    assert (record.state, record.stored) == ("succeeded", (out,))


def test_a_record_without_outputs_digests_as_before_the_field_existed() -> None:
    from federation.core.events import WriteJob

    record = JobRecord(id="j", region="eu", spec=Submit(id="j", command=["x"]))
    before = WriteJob(record=record)
    assert b',"stored":[]}' in encode(record)
    with_output = WriteJob(record=JobRecord(id="j", region="eu", spec=record.spec, stored=(ref(),)))
    assert commands_digest([before]) != commands_digest([with_output])
    # what an older core wrote: the same record without the field
    older = encode(record).replace(b',"stored":[]}', b"}")
    assert commands_digest([before]) == _digest_of(b'{"type":"WriteJob","record":' + older + b"}")


def _digest_of(encoded: bytes) -> str:
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_an_object_is_read_only_as_its_description_says() -> None:
    async def read(description: ObjectRef, *parts: bytes) -> bytes:
        return b"".join([c async for c in verified(_chunks(*parts), description, "eu")])

    assert asyncio.run(read(ref(), b"hel", b"lo\n")) == b"hello\n"
    for parts, why in (
        ((), "not in eu's object store"),
        ((b"hel",), "3 of 6 bytes"),
        ((b"hello\n", b"more"), "larger than its 6 bytes"),
        ((b"HELLO\n",), "does not match its digest"),
    ):
        with pytest.raises(ObjectError, match=why):
            asyncio.run(read(ref(), *parts))
    hasher = hashlib.sha256(b"hello\n")
    assert digest(hasher) == SUM


def test_outputs_are_regular_files_of_the_directory_itself(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1")
    (tmp_path / "b.csv").write_text("22")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_text("3")
    (tmp_path / "link.csv").symlink_to("/etc/passwd")
    (tmp_path / "dir.csv").mkdir()
    found, unmatched = find_outputs(tmp_path, ["*.csv", "model.pt", "a.csv"])
    assert found == [("a.csv", 1), ("b.csv", 2)]
    assert unmatched == ["model.pt"]
