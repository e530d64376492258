"""Message validation without I/O: an offer above the node's registered maximum is clamped and
flagged; one within it is left alone."""

from __future__ import annotations

from federation.schemas import Offer, clamp_offer


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
