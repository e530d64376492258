"""Identities, the keyring and the rendered authorization block (no servers running, except
``nats-server -t``, which checks a rendered configuration the way the server will read it)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from federation.errors import ConfigError
from federation.identity import load_credentials
from federation.ops import auth
from federation.ops.deploy import Server, server_config
from federation.ops.keyring import Keyring
from federation.ops.launcher import nats_server_binary
from tests.conftest import free_ports

REGIONS = ("eu", "us")


def _keyring(tmp_path: Path) -> Keyring:
    keyring = Keyring(tmp_path / "creds")
    keyring.add("admin", "admin")
    keyring.add("auditor", "auditor")
    keyring.add("tenant", "acme")
    for region in REGIONS:
        keyring.add("scheduler", region)
        keyring.add("leaf", region)
        keyring.add("agent", f"{region}-n1", region)
    return keyring


def test_credentials_files_are_private_and_name_their_identity(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    assert stat.S_IMODE(keyring.directory.stat().st_mode) == 0o700
    path = keyring.path("agent", "eu-n1", "eu")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = load_credentials(path)
    assert (creds.kind, creds.name, creds.region) == ("agent", "eu-n1", "eu")
    assert keyring.find("agent", "eu-n1", "eu") == creds.identity
    assert creds.inbox == f"_INBOX.{creds.public_key}"
    assert creds.seed not in (keyring.directory / "identities.json").read_text()  # no secret in the list


def test_key_files_hold_the_seed_alone_as_nats_tools_read_them(tmp_path: Path) -> None:
    import nkeys

    keyring = _keyring(tmp_path)
    path = keyring.path("tenant", "acme")
    assert path.name == "tenant.acme.nk"
    text = path.read_text()
    assert text.count("\n") == 1
    assert nkeys.from_seed(bytearray(text.strip().encode())).public_key.decode().startswith("U")  # as nats-py
    # renamed, the key is still known by its public key in the keyring's list; elsewhere: an admin's
    copy = keyring.directory / "handed-over.nk"
    copy.write_text(text)
    assert (load_credentials(copy).kind, load_credentials(copy).name) == ("tenant", "acme")
    stray = tmp_path / "elsewhere.nk"
    stray.write_text(text)
    assert load_credentials(stray).kind == "admin"


def test_key_files_of_the_earlier_format_are_rewritten_with_the_same_key(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    path = keyring.path("agent", "eu-n1", "eu")
    seed = path.read_text().strip()
    legacy = path.with_name("agent.eu.eu-n1.creds")
    legacy.write_text(f"# nats-federation credentials: keep secret\n# identity: agent eu eu-n1\n{seed}\n")
    path.unlink()
    assert load_credentials(legacy).identity == keyring.find("agent", "eu-n1", "eu")  # still read
    upgraded = Keyring.of(tmp_path)  # opening the keyring of a state directory rewrites them
    assert upgraded.path("agent", "eu-n1", "eu").read_text() == seed + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not legacy.exists()
    assert load_credentials(legacy).seed == seed  # a path of the old name (a connection file) finds it


def test_adding_twice_revoking_and_bad_names_are_refused(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    first = keyring.path("tenant", "acme").read_text()
    with pytest.raises(ConfigError, match="exists already"):
        keyring.add("tenant", "acme")
    assert keyring.add("tenant", "acme", exist_ok=True) == keyring.path("tenant", "acme")
    assert keyring.path("tenant", "acme").read_text() == first  # the key is kept
    revoked = keyring.revoke("tenant", "acme")
    assert revoked.kind == "tenant"
    assert keyring.find("tenant", "acme") is None
    assert not keyring.path("tenant", "acme").exists()
    with pytest.raises(ConfigError, match="no tenant acme"):
        keyring.revoke("tenant", "acme")
    for kind, name in (("admin", "admin"), ("scheduler", "eu"), ("leaf", "eu")):
        with pytest.raises(ConfigError, match="cannot be revoked"):
            keyring.revoke(kind, name)
    for kind, name, region in (
        ("root", "x", ""),
        ("tenant", "a.b", ""),
        ("agent", "n1", "EU"),
        ("tenant", "*", ""),
    ):
        with pytest.raises(Exception, match=r"invalid|unknown"):
            keyring.add(kind, name, region)


def test_a_credentials_file_without_a_user_seed_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.creds"
    bad.write_text("# identity: tenant acme\nnot a seed\n")
    with pytest.raises(ConfigError, match="no nkey seed"):
        load_credentials(bad)
    bad.write_text("SUAAAA\n")
    with pytest.raises(ConfigError, match="not an nkey seed"):
        load_credentials(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_credentials(tmp_path / "missing.creds")


def test_permissions_confine_each_role() -> None:
    def perms(kind: str, name: str, region: str = "") -> auth.Permissions:
        found = auth.permissions(auth.Identity(kind, name, "UKEY", region), REGIONS)
        assert found is not None
        return found

    agent = perms("agent", "n1", "eu")
    assert set(agent.publish) == {
        "fed.eu.hb.n1",
        "fed.eu.offer.n1",
        "fed.eu.status.n1.>",
        "$JS.API.DIRECT.GET.KV_fed-ledger-eu.$KV.fed-ledger-eu.n1",
        "$JS.API.DIRECT.GET.KV_fed-lease-eu.$KV.fed-lease-eu.scheduler",  # the region's cadence
        # jobs' files: outputs under its node's name; inputs from its region's store and, through
        # the hub, from every other region's
        "$O.fed-objects-eu.C.out.n1.*",
        "$JS.API.DIRECT.GET.OBJ_fed-objects-eu",
        *(f"$JS.{r}.API.DIRECT.GET.OBJ_fed-objects-{r}" for r in REGIONS if r != "eu"),
    }
    assert set(agent.subscribe) == {"fed.eu.ledger.n1", "_INBOX.UKEY.>"}
    tenant = perms("tenant", "acme")
    assert all(s.endswith(".acme") or ".acme." in s for s in tenant.publish)
    assert tenant.subscribe == ("_INBOX.UKEY.>",)
    auditor = perms("auditor", "auditor")
    assert not [s for s in auditor.publish if "DELETE" in s and "CONSUMER" not in s]
    assert not [s for s in auditor.publish if s.startswith("fed.") or "PURGE" in s or "UPDATE" in s]
    scheduler = perms("scheduler", "eu")
    assert "fed.us.>" not in scheduler.publish
    assert "$KV.fed-ledger-us.>" not in scheduler.publish
    leaf = perms("leaf", "eu")
    assert not leaf.publish
    assert "fed.*.hb.>" in leaf.publish_deny
    assert "$KV.>" in leaf.subscribe_deny
    assert "$O.>" in leaf.publish_deny  # no object store write crosses a link
    assert auth.permissions(auth.Identity("admin", "admin", "UKEY"), REGIONS) is None


def test_each_server_knows_only_the_identities_with_business_on_it(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    identities = keyring.identities()
    key = {(i.kind, i.region or i.name): i.public_key for i in identities}
    hub, eu = (auth.accounts(identities, REGIONS, domain) for domain in ("hub", "eu"))
    assert key[("leaf", "eu")] in hub
    assert key[("leaf", "eu")] not in eu  # only the hub accepts leafnodes
    assert key[("agent", "eu")] in eu
    assert key[("agent", "us")] not in eu
    assert key[("scheduler", "eu")] in eu
    assert key[("scheduler", "us")] not in eu
    assert key[("agent", "eu")] not in hub
    assert key[("tenant", "acme")] not in hub
    assert key[("admin", "admin")] in hub
    assert key[("admin", "admin")] in eu
    # agents and tenants sit in accounts of their own, reaching FED through service imports
    agents = eu[eu.index("AGENTS {") :]
    assert key[("agent", "eu")] in agents
    assert '{ service: { account: FED, subject: "fed.eu.hb.*" } }' in agents
    assert "jetstream: enabled" not in agents
    with pytest.raises(ConfigError, match="default"):
        keyring.add("tenant", "default")


def test_rendered_configs_pass_nats_server_check(tmp_path: Path) -> None:
    keyring = _keyring(tmp_path)
    identities = keyring.identities()
    configs = {
        "hub": Server(
            name="hub",
            domain="hub",
            store_dir=str(tmp_path / "hub"),
            leaf_listen=-1,
            accounts=auth.accounts(identities, REGIONS, "hub"),
        ),
        "eu": Server(
            name="eu",
            domain="eu",
            store_dir=str(tmp_path / "eu"),
            leaf_remotes=(f"nats-leaf://127.0.0.1:{free_ports(1)[0]}",),
            accounts=auth.accounts(identities, REGIONS, "eu"),
            leaf_seed=keyring.credentials("leaf", "eu").seed,
        ),
    }
    for name, server in configs.items():
        path = tmp_path / f"{name}.conf"
        path.write_text(server_config(server))
        check = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, f"{name}: {check.stderr}{check.stdout}"
    broken = tmp_path / "broken.conf"
    broken.write_text(server_config(configs["hub"]).replace("permissions: {", "permissions: {{", 1))
    check = subprocess.run([nats_server_binary(), "-t", "-c", str(broken)], capture_output=True, timeout=30)
    assert check.returncode != 0
