"""Message validation without I/O: an offer above the node's registered maximum is clamped and
flagged; one within it is left alone. A workload message is accepted only as the type its subject
names and only with fields a submitter may set."""

from __future__ import annotations

import json

import msgspec
import pytest

from federation.errors import RemoteProtocolError
from federation.schemas import Cancel, Offer, Submit, clamp_offer, decode_workload, encode


def offer(**kw: object) -> Offer:
    fields: dict[str, object] = {"node": "n1", "region": "eu", "cores": [0, 1], "memory": 1 << 30}
    fields.update(kw)
    return Offer(**fields)  # type: ignore[arg-type]


def test_an_offer_within_its_registered_maximum_is_unchanged() -> None:
    within = offer(capacity_cpu=2, capacity_memory=1 << 30)
    assert clamp_offer(within) == (within, "")
    assert clamp_offer(offer()) == (offer(), "")  # nothing registered: nothing to hold it to


def test_an_offer_above_its_registered_maximum_is_clamped_and_flagged() -> None:
    greedy = offer(
        cores=list(range(64)),
        gpus=["g0", "g1", "g2"],
        memory=1 << 40,
        capacity_cpu=4,
        capacity_gpu=1,
        capacity_memory=8 << 30,
        note="declared",
    )
    clamped, why = clamp_offer(greedy)
    assert clamped.cores == [0, 1, 2, 3]
    assert clamped.gpus == ["g0"]
    assert clamped.memory == 8 << 30
    assert "64 cores offered, 4 registered" in why
    assert "3 GPUs offered, 1 registered" in why
    assert clamped.note.startswith("declared; offer clamped")


def workload(payload: dict[str, object], kind: str = "submit", tenant: str = "") -> object:
    """``payload`` as the eu scheduler decodes it from ``fed.eu.wl.<kind>.j1[.<tenant>]``."""
    return decode_workload(json.dumps(payload).encode(), kind=kind, job="j1", tenant=tenant, region="eu")


def test_a_cancel_published_on_a_submit_subject_is_refused_not_processed_as_a_cancel() -> None:
    with pytest.raises(
        RemoteProtocolError, match="message type 'cancel' does not belong on a submit subject"
    ):
        workload({"type": "cancel", "id": "j1"})


def test_any_type_other_than_the_subjects_own_is_refused() -> None:
    with pytest.raises(
        RemoteProtocolError, match="message type 'submit' does not belong on a cancel subject"
    ):
        workload({"type": "submit", "id": "j1", "command": ["true"]}, kind="cancel")
    heartbeat = {"type": "heartbeat", "node": "n1", "seq": 1, "sent_at": 1.0}
    with pytest.raises(RemoteProtocolError, match="message type 'heartbeat' does not belong on a submit"):
        workload(heartbeat)
    with pytest.raises(RemoteProtocolError, match="'resubmit' is not a workload subject"):
        workload({"type": "submit", "id": "j1", "command": ["true"]}, kind="resubmit")


def test_a_submission_and_a_cancel_on_their_own_subjects_are_accepted() -> None:
    submit = workload({"type": "submit", "id": "j1", "command": ["true"], "from_the_future": 1})
    assert isinstance(submit, Submit)
    assert submit.command == ["true"]
    cancel = workload({"type": "cancel", "id": "j1", "reason": "enough"}, kind="cancel")
    assert isinstance(cancel, Cancel)
    assert cancel.reason == "enough"


def test_a_submission_with_a_hand_set_origin_is_refused_naming_the_field() -> None:
    for origin in ("us-east", "eu"):
        with pytest.raises(RemoteProtocolError, match=r"may not set origin \('"):
            workload({"type": "submit", "id": "j1", "command": ["true"], "origin": origin})
    shaped = {"type": "submit", "id": "j1", "command": ["true"], "origin": "us-east", "regions": ["eu"]}
    with pytest.raises(RemoteProtocolError, match="origin"):  # a tenant never hands off
        workload({**shaped, "tenant": "acme"}, tenant="acme")


def test_a_hand_off_stored_by_this_regions_scheduler_keeps_its_origin() -> None:
    # what federation.scheduler.handoff stores when eu accepts us-east's job
    spec = Submit(id="j1", command=["true"], regions=["any"], submitted_at=5.0)
    stored = msgspec.structs.replace(spec, origin="us-east", regions=["eu"])
    accepted = decode_workload(encode(stored), kind="submit", job="j1", tenant="", region="eu")
    assert accepted == stored


@pytest.mark.parametrize("field", ["attempt", "epoch", "state", "node", "forwarded_to", "not_before"])
def test_a_submission_setting_a_field_only_the_scheduler_writes_is_refused(field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=f"may not set {field}: only the scheduler writes"):
        workload({"type": "submit", "id": "j1", "command": ["true"], field: 1})


def test_a_submission_cannot_backdate_itself_to_jump_the_queue() -> None:
    from federation.schemas import SUBMIT_SKEW, Submit, as_stored

    stored = 1_000_000.0
    honest = Submit(id="a", command=["true"], submitted_at=stored - 0.2)
    assert as_stored(honest, stored) is honest
    assert (
        as_stored(Submit(id="b", command=["true"], submitted_at=1.0), stored).submitted_at
        == stored - SUBMIT_SKEW
    )
    assert (
        as_stored(Submit(id="c", command=["true"], submitted_at=9e9), stored).submitted_at
        == stored + SUBMIT_SKEW
    )
    assert as_stored(Submit(id="d", command=["true"]), stored).submitted_at == stored  # no time given
    handed = Submit(id="e", command=["true"], submitted_at=1.0, origin="us", regions=["eu"])
    assert as_stored(handed, stored) is handed  # a hand-off keeps its home region's time
    assert as_stored(Submit(id="f", command=["true"], submitted_at=1.0), 0.0).submitted_at == 1.0
