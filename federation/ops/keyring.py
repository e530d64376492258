"""The keyring: a federation's identities on disk (``<state-dir>/creds``).

``identities.json`` lists every identity the servers accept (role, name and public key: nothing
secret), and each identity's key file ``<kind>.[<region>.]<name>.nk`` holds its nkey seed alone
(mode 0600, in a 0700 directory): the format NATS tools read (``nats --nkey FILE``, nats-py's
``nkeys_seed=FILE``). Who the key is comes from the file's name (and, renamed, from its public
key in ``identities.json``). Key files of the earlier format (``.creds``, with comment lines) are
rewritten as ``.nk`` when the keyring is opened (:meth:`Keyring.upgrade`).

Removing an identity from the list is a revocation: servers refuse its key after their
configuration is rendered again and reloaded (``fed creds revoke``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from federation.errors import ConfigError
from federation.identity import (
    LEGACY_FILE,
    SEED_FILE,
    Credentials,
    Identity,
    key_file_name,
    load_credentials,
    new_seed,
    public_key,
)
from federation.ops.auth import check_identity

REGISTRY = "identities.json"
MANAGED = ("admin", "scheduler", "leaf")  # without them the federation does not run


def credentials_name(kind: str, name: str, region: str = "") -> str:
    """The file name of an identity's key (see :func:`~federation.identity.key_file_name`)."""
    return key_file_name(kind, name, region)


class Keyring:
    """The identities of one federation, and the credentials this machine holds for them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, state_dir: Path) -> Keyring:
        """The keyring of the federation run from ``state_dir`` (key files of the earlier format
        rewritten: :meth:`upgrade`)."""
        keyring = cls(state_dir / "creds")
        keyring.upgrade()
        return keyring

    def upgrade(self) -> list[Path]:
        """Rewrite every key file of the earlier format (``.creds``: comment lines, then the seed)
        as a ``.nk`` key file holding the seed alone, the same key; return the new files. The old
        file is removed once the new one is on disk (a path naming it still finds the key:
        :func:`~federation.identity.load_credentials`)."""
        written = []
        for legacy in sorted(self.directory.glob(f"*{LEGACY_FILE}")) if self.directory.is_dir() else []:
            target = legacy.with_suffix(SEED_FILE)
            if not target.exists():
                write_private(target, load_credentials(legacy).seed + "\n")
                written.append(target)
            legacy.unlink()
        return written

    def identities(self) -> list[Identity]:
        """Every identity the servers accept."""
        try:
            rows = json.loads((self.directory / REGISTRY).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable keyring: {exc}", source=str(self.directory / REGISTRY)) from None
        return [Identity(r["kind"], r["name"], r["public_key"], r.get("region", "")) for r in rows]

    def find(self, kind: str, name: str, region: str = "") -> Identity | None:
        return next(
            (i for i in self.identities() if (i.kind, i.name, i.region) == (kind, name, region)),
            None,
        )

    def path(self, kind: str, name: str, region: str = "") -> Path:
        return self.directory / credentials_name(kind, name, region)

    def add(self, kind: str, name: str, region: str = "", *, exist_ok: bool = False) -> Path:
        """Create an identity and its credentials file; return the file's path."""
        check_identity(kind, name, region)
        path = self.path(kind, name, region)
        if self.find(kind, name, region) is not None:
            if not exist_ok:
                raise ConfigError(f"{kind} {name} exists already (revoke it first to replace its key)")
            if path.exists():
                return path  # (a listed identity whose file is gone gets a new key)
        seed = new_seed()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        write_private(path, seed + "\n")
        others = [i for i in self.identities() if (i.kind, i.name, i.region) != (kind, name, region)]
        self._save([*others, Identity(kind, name, public_key(seed), region)])
        return path

    def revoke(self, kind: str, name: str, region: str = "") -> Identity:
        """Remove an identity (the servers refuse it once reloaded) and delete its credentials."""
        if kind in MANAGED:
            raise ConfigError(f"a {kind} identity is part of the federation itself; it cannot be revoked")
        found = self.find(kind, name, region)
        if found is None:
            raise ConfigError(f"no {kind} {name} in {self.directory / REGISTRY}")
        self._save([i for i in self.identities() if i != found])
        self.path(kind, name, region).unlink(missing_ok=True)
        return found

    def credentials(self, kind: str, name: str, region: str = "") -> Credentials:
        return load_credentials(self.path(kind, name, region))

    def _save(self, identities: list[Identity]) -> None:
        rows = [
            {"kind": i.kind, "name": i.name, "region": i.region, "public_key": i.public_key}
            for i in sorted(identities, key=lambda i: (i.kind, i.region, i.name))
        ]
        write_private(self.directory / REGISTRY, json.dumps(rows, indent=1) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a crash leaves the old file), readable by us only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a stale one could carry a wider mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
