"""Who a process is when it connects: its key, its role, its TLS files.

An identity is an nkey (an Ed25519 key pair: the server keeps only the public key and checks a
signature of its nonce) with a role (:class:`Identity`); :class:`Credentials` are what a client
presents (the seed, a secret, and who that is), read from a credentials file by
:func:`load_credentials`. What each role may do is decided in :mod:`federation.ops.auth`;
the keys on disk are kept by :mod:`federation.ops.keyring`.

The last section is process state: who this process is (:func:`use_credentials`,
:func:`use_tls`: a daemon's ``--creds`` and ``--tls-*``), which every connection it opens without
its own presents.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from federation.errors import ConfigError, FederationUnavailable


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a CA bundle, a certificate and its key (PEM)."""

    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class Identity:
    """One key and its role. ``name`` is the node (agent), tenant, or region (scheduler, leaf)."""

    kind: str
    name: str
    public_key: str
    region: str = ""  # an agent's region

    @property
    def label(self) -> str:
        """How people name it: ``agent eu-west/eu-west-n1``, ``tenant acme``."""
        where = f"{self.region}/" if self.region else ""
        return f"{self.kind} {where}{self.name}"

    @property
    def inbox(self) -> str:
        """The prefix of this identity's private inbox subjects."""
        return inbox(self.public_key)


@dataclass(frozen=True)
class Credentials:
    """What a client presents: its identity's seed (secret), and who that is."""

    seed: str
    kind: str = "admin"
    name: str = "admin"
    region: str = ""
    public_key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.public_key:
            object.__setattr__(self, "public_key", public_key(self.seed))

    @property
    def inbox(self) -> str:
        return inbox(self.public_key)

    @property
    def identity(self) -> Identity:
        return Identity(self.kind, self.name, self.public_key, self.region)


def new_seed() -> str:
    """A fresh user nkey seed (``SU...``): the secret an identity signs with."""
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


def public_key(seed: str) -> str:
    """The public key (``U...``) of a user seed; ConfigError for anything that is not one."""
    try:
        key = str(nkeys.from_seed(bytearray(seed.strip().encode())).public_key.decode())
    except (nkeys.NkeysError, ValueError, TypeError) as exc:
        raise ConfigError(f"not an nkey seed: {exc}") from None
    if not key.startswith("U"):
        raise ConfigError("not a user nkey seed (it must start with SU)")
    return key


def inbox(key: str) -> str:
    return f"_INBOX.{key}"


SEED_FILE = ".nk"  # an identity's key file: its seed alone, as NATS tools read it
LEGACY_FILE = ".creds"  # the earlier format: comment lines naming the identity, then the seed
ROLES = ("admin", "scheduler", "agent", "tenant", "auditor", "leaf")


def key_file_name(kind: str, name: str, region: str = "") -> str:
    """The file name of an identity's key: ``<kind>.[<region>.]<name>.nk`` ('.' is in no name)."""
    return f"{kind}.{region}.{name}{SEED_FILE}" if region else f"{kind}.{name}{SEED_FILE}"


def load_credentials(path: Path | str) -> Credentials:
    """Read an identity's key file.

    A key file holds the nkey seed alone (what ``nats --nkey FILE`` and nats-py's ``nkeys_seed=``
    read); who it is comes from its name, ``<kind>.[<region>.]<name>.nk``, or, for a file under
    another name, from the keyring's ``identities.json`` beside it (by its public key); failing
    both it is taken as an admin's. Files of the earlier format (``.creds``: comment lines naming
    the identity, then the seed) are still read, and a ``.creds`` path whose file has been
    rewritten as ``.nk`` (:meth:`~federation.ops.keyring.Keyring.upgrade`) finds it there.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        renamed = path.with_suffix(SEED_FILE)
        if path.suffix != LEGACY_FILE or not renamed.exists():
            missing = "cannot read credentials: No such file or directory"
            raise ConfigError(missing, source=str(path)) from None
        path, text = renamed, renamed.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read credentials: {exc.strerror}", source=str(path)) from None
    named: tuple[str, str, str] | None = None
    seed = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# identity:"):
            parts = line.split(":", 1)[1].split()
            if len(parts) == 2:
                named = (parts[0], "", parts[1])
            elif len(parts) == 3:
                named = (parts[0], parts[1], parts[2])
        elif line.startswith("SU"):
            seed = line
    if not seed:
        raise ConfigError("no nkey seed (a line starting with SU) in the credentials file", source=str(path))
    named = named or _named_by_file(path) or _named_by_registry(path, seed)
    kind, region, name = named or ("admin", "", "admin")
    return Credentials(seed=seed, kind=kind, name=name, region=region)


def _named_by_file(path: Path) -> tuple[str, str, str] | None:
    """(kind, region, name) from a key file's name, ``<kind>.[<region>.]<name>.nk``."""
    parts = path.name.split(".")
    if path.suffix != SEED_FILE or parts[0] not in ROLES or len(parts) not in (3, 4):
        return None
    return (parts[0], parts[1], parts[2]) if len(parts) == 4 else (parts[0], "", parts[1])


def _named_by_registry(path: Path, seed: str) -> tuple[str, str, str] | None:
    """(kind, region, name) of the seed's public key in the ``identities.json`` beside ``path``."""
    import json

    try:
        rows = json.loads((path.parent / "identities.json").read_text())
        key = public_key(seed)
        row = next(r for r in rows if r.get("public_key") == key)
    except (OSError, ValueError, StopIteration, ConfigError):
        return None
    return (str(row["kind"]), str(row.get("region", "")), str(row["name"]))


# --- this process's identity ---------------------------------------------------------------------

_tls: TlsFiles | None = None
_credentials: Credentials | None = None


def use_tls(files: TlsFiles | None) -> None:
    """Make ``files`` the TLS of every connection this process opens without its own."""
    global _tls
    _tls = files


def use_credentials(credentials: Credentials | None) -> None:
    """Make ``credentials`` the identity of every connection this process opens without its own."""
    global _credentials
    _credentials = credentials


def process_tls() -> TlsFiles | None:
    return _tls


def process_credentials() -> Credentials | None:
    return _credentials


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client TLS context: the server must chain to ``files.ca``; we present ``files.cert``."""
    try:
        context = ssl.create_default_context(cafile=files.ca)
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise FederationUnavailable("tls", f"cannot load the TLS files: {exc}") from None
    return context
