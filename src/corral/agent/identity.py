"""Which user the agent's processes run as: a configured one, and never root unless asked.

:func:`resolve` turns the agent's ``--run-as USER`` and ``--allow-root`` into one of:

- ``None``: processes run as the agent's own user. This is the default for an agent that
  is not root, or one told ``--allow-root``, or one told to run them as its own user, and
  it keeps the launcher's fast path (``posix_spawn``) untouched;
- :class:`RunAs`: the agent is root and processes run as USER (its uid, primary group and
  supplementary groups, and its HOME, USER and LOGNAME in their environment);
- :class:`Refuse`: every launch fails, saying why: a root agent with neither setting, a
  user this node does not know, or another user than its own for an agent that is not
  root (only root may switch users).

``posix_spawn`` cannot change user, so :class:`RunAs` starts processes with
``subprocess.Popen(user=, group=, extra_groups=)``, whose child switches before it execs
(a fork, not a vfork: slower, but only processes that switch pay it). Popen's exec errors
come back as ``OSError`` as posix_spawn's do, so a launch that fails is ``spawn_failed``
either way.

The configuration file of a process that runs as USER must be readable by USER, and the
agent's own directories are not: such files live in a directory of root's that anyone may
cross but no one else may list or write (``/dev/shm/corral-0-as-<uid>/<agent>``, mode
0711), each owned by USER; ``STATE_DIR/config-as`` links to it so a node's clean-up finds
it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from corral.agent.pidfiles import CONFIG_LINK
from corral.wire.messages import Launch


class Identity(Protocol):
    """How processes are started when they do not simply run as the agent's user."""

    @property
    def owner(self) -> int | None:
        """Who owns their configuration files (None: the agent)."""
        ...

    def config_dir(self, state_dir: Path) -> Path: ...

    def spawn(
        self, launch: Launch, program: str, env: Mapping[str, str], stdin: int, out: int, err: int
    ) -> int:
        """Start ``program`` (``launch.exec`` found on PATH) as ``launch`` says; its pid."""
        ...


@dataclass(frozen=True, slots=True)
class Refuse:
    """No process may start; ``reason`` says why, in each launch's failure."""

    reason: str
    owner: int | None = None

    def config_dir(self, state_dir: Path) -> Path:
        return state_dir / "config"

    def spawn(
        self, launch: Launch, program: str, env: Mapping[str, str], stdin: int, out: int, err: int
    ) -> int:
        raise PermissionError(errno.EPERM, self.reason)


@dataclass(frozen=True, slots=True)
class RunAs:
    """Processes run as this user; the agent is root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @property
    def owner(self) -> int | None:
        return self.uid

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The agent's environment as the user's processes start from it."""
        return {**base, "HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def config_dir(self, state_dir: Path) -> Path:
        base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
        root = _crossable_dir(base / f"corral-{os.geteuid()}-as-{self.uid}")
        digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
        directory = _crossable_dir(root / digest)
        link = state_dir / CONFIG_LINK
        if not (link.is_symlink() and os.readlink(link) == str(directory)):
            link.unlink(missing_ok=True)
            link.symlink_to(directory, target_is_directory=True)
        return directory

    def spawn(
        self, launch: Launch, program: str, env: Mapping[str, str], stdin: int, out: int, err: int
    ) -> int:
        try:
            child = subprocess.Popen(
                [launch.exec, *launch.argv],
                executable=program,
                env=dict(env),
                stdin=stdin,
                stdout=out,
                stderr=err,
                cwd=launch.working_directory,
                process_group=0,  # a group of its own, as the launcher's own spawns
                user=self.uid,
                group=self.gid,
                extra_groups=list(self.groups),
            )
        except subprocess.SubprocessError as exc:
            raise PermissionError(errno.EPERM, f"cannot run as {self.name}: {exc}") from None
        # The launcher watches and reaps this child through its pidfd, like the others:
        # the Popen object must neither reap it later nor warn that it still runs.
        child.returncode = 0
        return child.pid


def resolve(run_as: str | None, allow_root: bool, euid: int | None = None) -> Identity | None:
    """Who the processes of an agent running as ``euid`` run as (see the module doc)."""
    euid = os.geteuid() if euid is None else euid
    if run_as is None:
        if euid != 0 or allow_root:
            return None
        return Refuse(
            "refusing to run processes as root: the engine sets neither run_as (the user"
            " to run them as) nor allow_root = true"
        )
    try:
        entry = pwd.getpwuid(int(run_as)) if run_as.isdigit() else pwd.getpwnam(run_as)
    except (KeyError, OverflowError):
        return Refuse(f"cannot run processes as {run_as}: no such user on this node")
    if entry.pw_uid == euid:
        return None
    if euid != 0:
        return Refuse(
            f"cannot run processes as {entry.pw_name}: the agent runs as uid {euid}, and"
            " only root may switch users"
        )
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _crossable_dir(path: Path) -> Path:
    """``path``, a directory of this user's that others may cross but not list or write.

    It lies in a directory everyone may write to (/dev/shm), so one someone else made, or
    a link planted there, is refused rather than used.
    """
    try:
        path.mkdir(mode=0o711, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise PermissionError(errno.EACCES, f"cannot prepare {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(errno.EACCES, f"{path} is not a directory of the agent's own")
    if stat.S_IMODE(info.st_mode) != 0o711:
        os.chmod(path, 0o711)
    return path
