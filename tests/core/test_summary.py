"""Region summaries, aggregated the Oakestra way (pure: no server)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.summary import GONE_AFTER, NodeState, fold, summarize
from federation.schemas import Allocation, Offer, Summary, decode_message, encode

GiB = 1024**3


def offer(node: str, **kw: object) -> Offer:
    base: dict[str, object] = {"cores": [0, 1, 2, 3], "memory": 8 * GiB, "expires_at": 1e9}
    base.update(kw)
    return Offer(node=node, region="eu", **base)  # type: ignore[arg-type]


def test_a_custom_resource_aggregates_by_value_type() -> None:
    nodes = [
        NodeState(
            offer(
                "a",
                custom={"licence": 3.0},
                attributes={"scratch_gb": 100.0, "os": "debian12", "isa": ["avx2"]},
            )
        ),
        NodeState(
            offer(
                "b",
                custom={"licence": 1.0},
                attributes={"scratch_gb": 50.0, "os": "rhel9", "isa": ["avx2", "avx512"]},
            )
        ),
    ]
    summary = summarize("eu", nodes, now=10.0)
    assert summary.custom["scratch_gb"] == 150.0  # numbers summed
    assert summary.custom["os"] == ["debian12", "rhel9"]  # strings collected
    assert summary.custom["isa"] == ["avx2", "avx512"]  # lists flattened
    assert summary.custom["licence"] == 4.0  # a counted resource: what is free of it


def test_canonical_resources_are_summed_free_after_allocations_and_utilisation_averaged() -> None:
    taken = Allocation(
        job="j", attempt=1, cpu=2, memory=GiB, cores=(0, 1), gpus=("g0",), custom={"licence": 1.0}
    )
    nodes = [
        NodeState(
            offer(
                "a",
                gpus=["g0", "g1"],
                cpu_percent=20.0,
                gpu_percent=50.0,
                custom={"licence": 2.0},
                labels={"city": "AMS", "gpu_model": "A100"},
                runtimes=["process"],
            ),
            allocations=(taken,),
        ),
        NodeState(offer("b", cpu_percent=60.0, labels={"city": "FRA"}, runtimes=["process"])),
        NodeState(offer("gone", expires_at=5.0)),  # expired: counted, adds nothing
        NodeState(offer("dead"), alive=False),  # heartbeat lost: counted, adds nothing
        NodeState(None),  # known from its ledger only
    ]
    summary = summarize("eu", nodes, now=10.0, pending=7)
    assert (summary.nodes, summary.live, summary.pending) == (5, 2, 7)
    assert (summary.cpu, summary.cpu_free) == (8, 6)
    assert (summary.memory, summary.memory_free) == (16 * GiB, 15 * GiB)
    assert (summary.gpu, summary.gpu_free) == (2, 1)
    assert summary.cpu_percent == 40.0
    assert summary.gpu_percent == 50.0  # averaged over nodes that offer a GPU
    assert summary.gpu_models == ["A100"]
    assert summary.runtimes == ["process"]
    assert summary.labels["city"] == ["AMS", "FRA"]
    assert summary.custom["licence"] == 1.0


def test_mixed_value_types_lose_nothing() -> None:
    assert fold([2.0, "x", ["y", "x"]]) == ["2", "x", "y"]
    assert fold([]) == 0.0


attribute = st.one_of(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
)


@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 4), attribute), max_size=12))
def test_a_summary_is_the_sum_of_its_nodes_and_survives_the_wire(rows: list[tuple[int, int, object]]) -> None:
    nodes = [
        NodeState(
            offer(
                f"n{i}",
                cores=list(range(cores)),
                gpus=[f"g{k}" for k in range(gpus)],
                attributes={"x": value},
            )
        )
        for i, (cores, gpus, value) in enumerate(rows)
    ]
    summary = summarize("eu", nodes, now=1.0)
    assert summary.cpu == summary.cpu_free == sum(cores for cores, _, _ in rows)
    assert summary.gpu == summary.gpu_free == sum(gpus for _, gpus, _ in rows)
    values = [value for _, _, value in rows]
    if rows and all(isinstance(v, float) for v in values):
        assert abs(summary.custom["x"] - sum(values)) < 1e-6 * max(1.0, sum(values))  # type: ignore[operator, arg-type]
    elif rows:
        flat = {
            s for v in values for s in (v if isinstance(v, list) else [v if isinstance(v, str) else f"{v:g}"])
        }
        assert summary.custom["x"] == sorted(flat)
    assert decode_message(encode(summary)) == summary
    assert isinstance(decode_message(encode(summary)), Summary)


def test_a_node_down_for_long_with_nothing_allocated_is_no_longer_counted() -> None:
    """Issue 16, defect 7: removed agents must not stay in "2/5 nodes live" forever."""
    offer = Offer(node="n", region="eu", cores=[0], memory=1, expires_at=1e9)
    held = (Allocation(job="j", attempt=1, cpu=1, cores=(0,)),)
    nodes = [
        NodeState(offer),
        NodeState(offer, alive=False, down_at=100.0),  # down a minute: still a node of the region
        NodeState(offer, alive=False, down_at=0.0),  # down for long: removed
        NodeState(offer, held, alive=False, down_at=0.0),  # down for long but holding a job: kept
    ]
    summary = summarize("eu", nodes, now=GONE_AFTER + 10.0)
    assert (summary.nodes, summary.live) == (3, 1)
