"""The feasibility table: one order of checks, asked by stage, the same for nodes and explain."""

from __future__ import annotations

from federation.core import feasibility as f
from federation.core.capacity import Free
from federation.core.views import NodeView
from federation.schemas import Allocation, Ledger, Offer, Submit, Summary


def offer(**kw: object) -> Offer:
    fields: dict[str, object] = {"node": "n1", "region": "eu", "cores": [0, 1], "memory": 4096}
    fields["expires_at"] = 100.0
    return Offer(**{**fields, **kw})  # type: ignore[arg-type]


def node(**kw: object) -> NodeView:
    view = NodeView(name="n1", offer=offer())
    for key, value in kw.items():
        setattr(view, key, value)
    if view.offer is not None:
        view.free = Free.of(view.offer, view.current().allocations)
    return view


def job(**kw: object) -> Submit:
    return Submit(id="j", command=["true"], **kw)  # type: ignore[arg-type]


def test_the_first_failing_check_in_table_order_is_the_reason() -> None:
    # down, expired, mislabelled, busy and too small at once: the table's first check speaks
    sick = node(alive=False, offer=offer(expires_at=1.0), proposal=Ledger(node="n1"))
    spec = job(cpu=8, require={"gpu_model": "A100"})
    assert f.rejection(sick, sick.free, spec, "eu", now=50.0) == f.DOWN
    sick.alive = True
    assert f.rejection(sick, sick.free, spec, "eu", now=50.0) == f.EXPIRED
    assert f.rejection(sick, sick.free, spec, "eu", now=0.5) == f.LABELS
    assert f.rejection(sick, sick.free, job(cpu=8), "eu", now=0.5) == f.BUSY
    sick.proposal = None
    assert f.rejection(sick, sick.free, job(cpu=8), "eu", now=0.5) == f.CPU
    assert f.rejection(sick, sick.free, job(cpu=2), "eu", now=0.5) is None
    assert f.rejection(NodeView(name="x"), None, job(), "eu", now=0.5) == f.NO_OFFER


def test_stages_select_what_a_caller_asks() -> None:
    busy = node(proposal=Ledger(node="n1"))
    big = job(cpu=8)
    assert f.rejection(busy, busy.free, big, "eu", 1.0) == f.BUSY
    assert f.rejection(busy, busy.free, big, "eu", 1.0, (f.LIVE, f.MATCH, f.ROOM)) == f.CPU  # claims aside
    assert f.rejection(busy, busy.free, big, "eu", 1.0, (f.LIVE, f.MATCH)) is None
    assert f.live(busy, 1.0)
    assert not f.live(busy, 100.0)


def test_explain_tells_full_from_too_small() -> None:
    held = Allocation(job="o", attempt=1, cores=(0, 1), memory=0, epoch=1)
    full = node(ledger=Ledger(node="n1", allocations=(held,)))
    assert f.explain(full, full.free, job(cpu=2), "eu", 1.0) == f.FULL  # fits once "o" finishes
    assert f.explain(full, full.free, job(cpu=3), "eu", 1.0) == f.CPU  # never fits this node
    assert f.explain(full, full.free, job(cpu=1, custom={"fpga": 1.0}), "eu", 1.0) == "too little fpga"
    assert f.explain(node(), node().free, job(), "eu", 1.0) == ""


def test_room_is_the_capacity_checks_alone() -> None:
    free = Free.of(offer(max_allocations=0), ())
    assert f.room(free, job()) == f.SLOTS
    assert f.room(Free.of(offer(), ()), job(memory=8192)) == f.MEMORY
    assert f.room(Free.of(offer(gpus=["g0"]), ()), job(gpu=2)) == f.GPU
    assert f.room(Free.of(offer(custom={"b": 1.0}), ()), job(custom={"b": 2.0, "a": 1.0})) == "too little a"


def test_explain_order_follows_the_table() -> None:
    reasons = {"too little zz": [], "too little aa": []}
    assert f.explain_order(reasons) == [
        f.NO_OFFER, f.DOWN, f.EXPIRED, f.LABELS, f.BUSY, f.FULL, f.SLOTS, f.CPU, f.MEMORY, f.GPU,
        "too little aa", "too little zz",
    ]  # fmt: skip
    line = f.explain_misfit(job(cpu=9), {f.CPU: ["b", "a"], f.DOWN: ["c"]}, considered=3)
    assert line == (
        "pending: no node fits cpu=9 memory=0B gpu=0: "
        "node down on 1 node (c); too little cpu on 2 nodes (a, b)"
    )


def test_regions_are_judged_by_the_same_table_liveness_room_then_labels() -> None:
    view = Summary(region="us", at=1.0, live=2, cpu_free=4, memory_free=1024, gpu_free=0)
    assert f.region_rejection(view, job(cpu=2)) == ""
    assert f.region_rejection(view, job(cpu=2), reserved=(3, 0, 0)) == "1 cores free"
    assert f.region_rejection(view, job(cpu=9, require={"city": "NYC"})) == "4 cores free"  # room first
    assert f.region_rejection(view, job(require={"city": "NYC"})) == "no node labelled city=NYC"
    assert f.region_rejection(view, job(require={"region": "us", "node": "any"})) == ""
    assert f.region_rejection(view, job(gpu=1)) == "0 GPUs free"
    assert f.region_rejection(view, job(memory=4096)) == "not enough memory free"
    dead = Summary(region="us", at=1.0, live=0)
    assert f.region_rejection(dead, job(require={"city": "NYC"})) == "no live node"
