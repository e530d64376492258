"""TLS (issue #7): with ``fed up --tls`` every client and leafnode connection is TLS with client
certificates from a local CA; jobs run as before, and a plaintext client or one whose certificate
comes from another CA is refused at connect."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from federation.bus import Bus
from federation.client import Client
from federation.errors import FederationUnavailable
from federation.identity import TlsFiles
from federation.ops.monitor import monitoring
from federation.ops.pki import local_authority
from tests.conftest import run_fed

pytestmark = pytest.mark.timeout(180)


async def test_a_tls_federation_runs_jobs_and_refuses_plaintext_and_foreign_certificates(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1, tls=True)
    connection = cluster.connection
    assert connection.tls_ca
    assert connection.hub_url.startswith("tls://")
    for key in Path(connection.tls_key), cluster.tmp / "tls" / "server-key.pem":
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    async with Client.connect(connection=connection) as fed:
        for region in ("aa", "bb"):
            done = await (await fed.submit(["true"], region=region)).wait(timeout=60)
            assert done.state == "succeeded"
        assert (await fed.audit_check(everywhere=True, wait=5.0)).events > 0  # the hub, over TLS leafnodes
    leafz = await monitoring(connection.hub_monitor, "leafz")
    assert int(leafz.get("leafnodes", 0)) == 2
    shown = await asyncio.to_thread(run_fed, cluster.tmp, "jobs", "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)) >= 1

    with pytest.raises(FederationUnavailable):  # plaintext: the server requires TLS
        await Bus.connect(cluster.url("aa"), "plaintext", retry_forever=False, timeout=2.0)
    _, foreign = local_authority(tmp_path / "other-ca")  # a certificate the federation never issued
    impostor = TlsFiles(ca=connection.tls_ca, cert=foreign.cert, key=foreign.key)
    with pytest.raises(FederationUnavailable):
        await _use(cluster.url("aa"), impostor)


async def _use(url: str, tls: TlsFiles) -> None:
    bus = await Bus.connect(url, "impostor", retry_forever=False, timeout=2.0, tls=tls)
    await bus.js.account_info()  # only reached if the handshake was (wrongly) accepted
