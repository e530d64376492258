"""Landlock: a workload may write only inside its own working directory.

Linux's Landlock (5.13+) lets an unprivileged process give up access rights for itself and
everything it starts, for good. :func:`confine_writes` runs in the workload's child process
between fork and exec: it handles every right that changes the filesystem (write, truncate,
create, remove, rename or link into) and grants them back only beneath the working directory
(and writing to ``/dev/null``). Reading and executing stay as the file modes allow; files opened
before (the output pipe) are not affected. Where the kernel knows scopes (ABI 6, Linux 6.12+), the
workload also cannot signal a process outside its sandbox (the agent, run as the same user) nor
connect to an abstract Unix socket outside it. ``/dev/shm`` is closed too, so POSIX semaphores
(Python's ``multiprocessing`` locks) do not work under it. ``no_new_privs`` is set first, as
Landlock requires of an unprivileged caller, so nothing the workload runs can gain privileges
through a set-user-id program either.

Called through ``ctypes`` (three system calls; their numbers are the same on every architecture).
"""

from __future__ import annotations

import ctypes
import os

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_VERSION_FLAG = 1  # LANDLOCK_CREATE_RULESET_VERSION
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

WRITE_FILE = 1 << 1
_DIRECTORY_WRITES = sum(1 << bit for bit in (4, 5, 6, 7, 8, 9, 10, 11, 12))  # remove, make *
REFER = 1 << 13  # ABI 2: rename or link across directories
TRUNCATE = 1 << 14  # ABI 3


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


_FS_ONLY = 8  # the size of the attribute before ABI 4 knew the other fields
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc = ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version (0: not available)."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION_FLAG))
    return max(0, int(version))


def _fail(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"landlock {what}: {os.strerror(errno)}")


def _rights(version: int) -> tuple[int, int]:
    """(directory rights, file rights) that change the filesystem, as this ABI knows them."""
    file_rights = WRITE_FILE | (TRUNCATE if version >= 3 else 0)
    return file_rights | _DIRECTORY_WRITES | (REFER if version >= 2 else 0), file_rights


def confine_writes(workdir: str) -> None:
    """From now on this process and its descendants may change files only beneath ``workdir``."""
    version = abi()
    if version < 1:
        raise OSError("landlock is not available on this kernel")
    everything, file_rights = _rights(version)
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if version >= 6 else 0
    attr = _RulesetAttr(handled_access_fs=everything, scoped=scoped)
    size = ctypes.sizeof(attr) if scoped else _FS_ONLY
    ruleset = _libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise _fail("create_ruleset")
    try:
        for path, allowed in ((workdir, everything), ("/dev/null", file_rights)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
                if _libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise _fail(f"add_rule {path}")
            finally:
                os.close(fd)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise _fail("no_new_privs")
        if _libc.syscall(_RESTRICT_SELF, ruleset, 0) < 0:
            raise _fail("restrict_self")
    finally:
        os.close(ruleset)
