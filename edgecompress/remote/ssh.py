"""Run commands on a Linux board over OpenSSH, with files going there and back as tar streams.

Why the system ``ssh`` client and not a Python SSH library: it is on every workstation, honours
the user's keys, agent and ``~/.ssh/config`` (ProxyJump to a lab board), and its host-key checks
are the ones people already trust. Every call runs with ``BatchMode=yes`` (never a password
prompt that would hang CI) and ``StrictHostKeyChecking=yes`` (an unknown or changed host key is
refused, never silently accepted).

Commands are given as argument lists and quoted here with :func:`shlex.quote` for the remote
POSIX shell, so a model called ``a b; rm -rf ~.onnx`` is one argument on the board, not a second
command. Files travel inside a tar stream on stdin/stdout: no ``scp`` path parsing on either side.
"""

from __future__ import annotations

import io
import logging
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from edgecompress.errors import BackendUnavailable, ConfigError, EdgeCompressError

if TYPE_CHECKING:
    from edgecompress.targets import Connection

logger = logging.getLogger(__name__)

#: ssh exits with this status when the connection itself failed (not the remote command).
SSH_FAILURE = 255
_HOST_KEY_MARKERS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                     "No matching host key", "host key for", "Host key for")
_AUTH_MARKERS = ("Permission denied", "Too many authentication failures")


class RemoteError(EdgeCompressError):
    """A remote command failed or ran out of time (exit 2: the input or device setup is wrong)."""


class RemoteUnreachable(BackendUnavailable):
    """The device does not answer (exit 3, like a missing runtime: nothing to measure on)."""


class HostKeyError(ConfigError):
    """The host's key is unknown or changed: refused, since it could be another machine."""


class LoginError(ConfigError):
    """The host answered but refused the login (user or key wrong)."""


def _quote_option(value: str) -> str:
    """An ``-o Key=value`` value as ssh's config parser reads it (paths with spaces)."""
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def remote_command(argv: Sequence[str]) -> str:
    """One argument list as a POSIX shell command line, every argument quoted."""
    if not argv:
        raise ConfigError("remote command is empty")
    return shlex.join(str(a) for a in argv)


@dataclass
class SSHRunner:
    """Run argument lists on ``host`` and move files there and back.

    Attributes:
        host: Name or address (a name from ``~/.ssh/config`` works).
        user: Login user (default: ssh's choice).
        port: TCP port (default: ssh's choice, usually 22).
        identity_file: Private key used exclusively (``IdentitiesOnly``).
        known_hosts: known_hosts file that must vouch for the host key.
        ssh_config: Client config passed with ``-F``.
        connect_timeout: Seconds for the TCP connection and key exchange.
        timeout: Seconds a whole command may take before ssh is killed.
        ssh: The client executable.
    """

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    connect_timeout: float = 10.0
    timeout: float = 1800.0
    ssh: str = "ssh"
    extra_options: list[str] = field(default_factory=list)

    @classmethod
    def from_connection(cls, conn: Connection) -> SSHRunner:
        """The runner a profile's ``connection`` (kind ``ssh``) describes."""
        if conn.kind != "ssh" or not conn.host:
            raise ConfigError(f"connection kind {conn.kind!r} is not an ssh connection")
        return cls(host=conn.host, user=conn.user, port=conn.port,
                   identity_file=conn.identity_file, known_hosts=conn.known_hosts,
                   ssh_config=conn.ssh_config, connect_timeout=conn.connect_timeout,
                   timeout=conn.timeout)

    @property
    def where(self) -> str:
        """``user@host:port`` for messages."""
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.host}" + (f":{self.port}" if self.port else "")

    def base_args(self) -> list[str]:
        """The ssh command up to (and including) the destination."""
        args = [self.ssh, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-o", "LogLevel=ERROR"]
        if self.ssh_config:
            args += ["-F", self.ssh_config]
        if self.known_hosts:
            path = str(Path(self.known_hosts).expanduser())
            if not Path(path).is_file():
                raise ConfigError(f"known_hosts file not found: {path} (connection.known_hosts)")
            args += ["-o", f"UserKnownHostsFile={_quote_option(path)}",
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity_file:
            key = str(Path(self.identity_file).expanduser())
            if not Path(key).is_file():
                raise ConfigError(f"identity file not found: {key} (connection.identity_file)")
            args += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if self.port:
            args += ["-p", str(self.port)]
        if self.user:
            args += ["-l", self.user]
        return [*args, *self.extra_options, "--", self.host]

    def _raise_for_ssh_failure(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        """Map ssh's own failure (exit 255) to an error saying what to fix."""
        err = proc.stderr.decode("utf-8", "replace").strip()
        last = err.splitlines()[-1] if err else "no message"
        if any(m in err for m in _HOST_KEY_MARKERS):
            raise HostKeyError(
                f"ssh {self.where}: host key not verified ({last}); add the board's key to "
                f"{self.known_hosts or '~/.ssh/known_hosts'} after checking its fingerprint "
                f"(e.g. ssh-keyscan -p {self.port or 22} {self.host} on a trusted network)")
        if any(m in err for m in _AUTH_MARKERS):
            raise LoginError(f"ssh {self.where}: login refused ({last}); check "
                             "connection.user and connection.identity_file")
        raise RemoteUnreachable(f"ssh {self.where}: cannot connect ({last}); check that the "
                                "board is on, on the network, and runs sshd")

    def run(self, argv: Sequence[str] | str, *, stdin: bytes | Path | None = None,
            timeout: float | None = None, check: bool = True,
            ) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the host and return the finished process (stdout/stderr bytes).

        Args:
            argv: An argument list (quoted here), or an already quoted shell command line
                (only for commands built from :func:`remote_command` pieces).
            stdin: Bytes or a local file streamed to the command's stdin.
            timeout: Seconds (default: the runner's ``timeout``).
            check: Raise :class:`RemoteError` when the remote command exits non-zero.

        Raises:
            RemoteUnreachable / HostKeyError / LoginError: ssh itself failed.
            RemoteError: Time ran out, or (``check``) the command failed.
        """
        command = argv if isinstance(argv, str) else remote_command(argv)
        args = [*self.base_args(), command]
        limit = self.timeout if timeout is None else timeout
        logger.debug("ssh %s: %s", self.where, command)
        try:
            if isinstance(stdin, Path):
                with open(stdin, "rb") as fh:
                    proc = subprocess.run(args, stdin=fh, capture_output=True, timeout=limit)
            else:
                proc = subprocess.run(args, input=stdin if stdin is not None else b"",
                                      capture_output=True, timeout=limit)
        except FileNotFoundError as err:
            raise BackendUnavailable(f"the ssh client {self.ssh!r} is not installed here "
                                     "(Debian/Ubuntu: apt-get install openssh-client)") from err
        except subprocess.TimeoutExpired as err:
            raise RemoteError(f"ssh {self.where}: {command[:200]} did not finish within "
                              f"{limit:g} s (connection.timeout)") from err
        if proc.returncode == SSH_FAILURE:
            self._raise_for_ssh_failure(proc)
        if check and proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-15:]
            raise RemoteError(f"ssh {self.where}: {command[:300]} failed with exit status "
                              f"{proc.returncode}:\n  " + "\n  ".join(tail or ["(no output)"]))
        return proc

    def check(self) -> None:
        """Log in and run ``true``: proves reachability, host key and login in one round trip."""
        self.run(["true"], timeout=self.connect_timeout + 20)

    def upload(self, files: Mapping[str, Path], remote_dir: str) -> None:
        """Copy local ``files`` (name on the board -> local path) into ``remote_dir``.

        Names are plain file names (no directories): the tar member names are exactly them.
        """
        for name in files:
            _check_member(name)
        script = (f"mkdir -p -- {shlex.quote(remote_dir)} && "
                  f"tar -x -f - -C {shlex.quote(remote_dir)}")
        with tempfile.NamedTemporaryFile(suffix=".tar") as staged:
            with tarfile.open(fileobj=staged, mode="w") as tar:
                for name, path in files.items():
                    if not Path(path).is_file():
                        raise ConfigError(f"file to copy to {self.where} not found: {path}")
                    tar.add(str(path), arcname=name, recursive=False)
            staged.flush()
            self.run(script, stdin=Path(staged.name))

    def download(self, remote_dir: str, names: Sequence[str], local_dir: Path) -> list[Path]:
        """Fetch ``names`` (plain file names, all must exist) from ``remote_dir`` into
        ``local_dir``; only those exact members are extracted."""
        for name in names:
            _check_member(name)
        proc = self.run(f"tar -c -f - -C {shlex.quote(remote_dir)} -- "
                        + " ".join(shlex.quote(n) for n in names))
        local_dir.mkdir(parents=True, exist_ok=True)
        out = []
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in names:
                member = members.get(name)
                if member is None or not member.isfile():
                    raise RemoteError(f"ssh {self.where}: {remote_dir}/{name} did not come back "
                                      "as a regular file")
                data = tar.extractfile(member)
                assert data is not None  # a regular file always has data
                target = local_dir / name
                target.write_bytes(data.read())
                out.append(target)
        return out

    def remove(self, remote_dir: str) -> None:
        """Delete ``remote_dir`` on the board (best effort: a failure is only logged)."""
        try:
            self.run(["rm", "-rf", "--", remote_dir], timeout=60)
        except EdgeCompressError as err:
            logger.warning("could not remove %s on %s: %s", remote_dir, self.where, err)


def _check_member(name: str) -> None:
    pure = PurePosixPath(name)
    if not name or name in (".", "..") or len(pure.parts) != 1 or "\\" in name:
        raise ConfigError(f"remote file name {name!r} must be a plain file name")
