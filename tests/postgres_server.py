"""A throwaway PostgreSQL server on loopback for tests and benches: initdb in a temporary folder, started with pg_ctl,
stopped and deleted on exit. Postgres refuses to run as root, so as root it runs as the `postgres` user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CANDIDATE_BIN_DIRS = [Path(p) for p in ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                                         "/usr/lib/postgresql/15/bin")]


class PostgresUnavailable(RuntimeError):
    pass


def _binaries() -> Path:
    for folder in CANDIDATE_BIN_DIRS:
        if (folder / "initdb").exists():
            return folder
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl): `apt-get install postgresql` on Debian")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[tuple[str, int]]:
    """(user, port) of a fresh server with trust authentication on 127.0.0.1."""
    binaries = _binaries()
    root = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    as_user: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as error:
            raise PostgresUnavailable("running as root and there is no `postgres` user to run the server") from error
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user, user = ["runuser", "-u", "postgres", "--"], "postgres"
    data, port = root / "data", _free_port()
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)
    try:
        run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync")
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200")
    except subprocess.CalledProcessError as error:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"could not start PostgreSQL: {error.stderr.strip()[-500:]}") from error
    try:
        yield user, port
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(user: str, port: int, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
