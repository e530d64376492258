"""Config files fail loudly; the sharing policy turns a host sample into the right offer."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.probes import GpuSample, HostSample, build_offer
from federation.config import AgentConfig, SharingPolicy, load_toml
from federation.errors import ConfigError
from federation.resources import format_memory, parse_capacity, parse_memory

GiB = 1024**3


def sample(cpu: float = 10.0, available: int = 12 * GiB, gpus: tuple[GpuSample, ...] = ()) -> HostSample:
    return HostSample(
        cpu_ids=(0, 1, 2, 3), cpu_percent=cpu, memory_total=16 * GiB, memory_available=available, gpus=gpus
    )


def test_agent_toml_with_sharing_policy_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'region = "eu"\nnode = "gpu-7"\ngpu_ids = ["0", "1"]\n[labels]\ncity = "AMS"\n'
        "[sharing]\ncheck_interval = 5\noffer_expiry = 20\nmax_offers_per_node = 4\ncpu_percent_max = 80\n"
    )
    config = load_toml(path, AgentConfig)
    assert config.sharing.cpu_percent_max == 80
    assert config.labels == {"city": "AMS"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('region = "eu"\nnode = "n"\n[sharing]\ncpu_percent_maximum = 80\n', "cpu_percent_maximum"),
        ('region = "eu"\nnode = "n"\ncolour = "blue"\n', "colour"),
        ('region = "eu"\nnode = "n"\n[sharing]\ncpu_percent_max = 180\n', "cpu_percent_max"),
        ('region = "eu"\nnode = "n"\n[sharing\n', "invalid TOML"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_toml(path, AgentConfig)


def test_quantities_parse_and_format() -> None:
    assert parse_memory("8GiB") == 8 * GiB
    assert parse_memory("512MB") == 512 * 1000**2
    assert format_memory(8 * GiB) == "8GiB"
    assert parse_capacity("cpu=4,memory=8GiB,gpu=1") == {"cpu": 4, "memory": 8 * GiB, "gpu": 1}
    for bad in ("cpu=four", "disk=1", "memory", "memory=lots"):
        with pytest.raises(ConfigError):
            parse_capacity(bad)


def config(**sharing: float) -> AgentConfig:
    return AgentConfig(
        region="eu", node="n1", cpu=2, memory=4 * GiB, gpu_ids=["0", "1"], sharing=SharingPolicy(**sharing)
    )  # type: ignore[arg-type]


def test_quiet_host_offers_declared_capacity_pinned_to_real_cores() -> None:
    offer = build_offer(config(), sample(), now=100.0)
    assert offer.cores == [0, 1]
    assert offer.pinned
    assert offer.memory == 4 * GiB
    assert offer.gpus == ["0", "1"]
    assert offer.expires_at == 100.0 + SharingPolicy().offer_expiry


def test_busy_host_withholds_cpu_and_memory_under_thresholds() -> None:
    offer = build_offer(config(cpu_percent_max=50, memory_min_gb=8), sample(cpu=75, available=6 * GiB), now=0)
    assert offer.cores == []
    assert offer.memory == 0
    assert "cpu withheld" in offer.note
    assert "memory withheld" in offer.note


def test_busy_gpu_is_withheld_per_device() -> None:
    gpus = (GpuSample("0", 95.0, 1000.0, "A100"), GpuSample("1", 5.0, 30000.0, "A100"))
    offer = build_offer(config(gpu_utilization_max=50), sample(gpus=gpus), now=0)
    assert offer.gpus == ["1"]
    assert offer.labels["gpu_model"] == "A100"
    assert offer.gpu_percent == 50.0  # the average over the node's GPUs, for region summaries


def test_an_offer_carries_utilisation_runtimes_and_attributes(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'region = "eu"\nnode = "n1"\nattributes = { scratch_gb = 500, os = "debian12", isa = ["avx2"] }\n'
    )
    offer = build_offer(load_toml(path, AgentConfig), sample(cpu=25.0, available=12 * GiB), now=0)
    assert (offer.cpu_percent, offer.memory_percent) == (25.0, 25.0)
    assert offer.runtimes == ["process"]
    assert offer.attributes == {"scratch_gb": 500, "os": "debian12", "isa": ["avx2"]}


def test_over_declared_node_runs_unpinned_and_says_so() -> None:
    cfg = AgentConfig(region="eu", node="n1", cpu=16)
    offer = build_offer(cfg, sample(), now=0)
    assert not offer.pinned
    assert len(offer.cores) == 16
    assert "unpinned" in offer.note


def test_disabled_sharing_offers_nothing() -> None:
    offer = build_offer(config(enabled=False), sample(), now=0)
    assert (offer.cores, offer.memory, offer.gpus) == ([], 0, [])


def test_a_flag_overrides_one_key_of_a_table_not_the_whole_table(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('region = "eu"\nnode = "n"\n[sharing]\ncpu_percent_max = 70\n')
    config = load_toml(path, AgentConfig, {"sharing": {"max_offers_per_node": 4}})
    assert config.sharing.cpu_percent_max == 70
    assert config.sharing.max_offers_per_node == 4
