"""The embedded default: a PostgreSQL server from the ``pgserver`` wheel, in the data directory.

With no ``database_url`` configured, ``jisr`` starts PostgreSQL itself from the binaries that the
``pgserver`` wheel ships, with its cluster in ``<data_dir>/postgres``, listening on a Unix socket
only, and stops it when the last Jisr process using it exits.

PostgreSQL refuses to run as root. When ``jisr`` runs as root, ``pgserver`` creates (once) an
unprivileged system user named ``pgserver`` and runs the server as that user; the cluster
directory is then owned by it. Production deployments should point ``database_url`` at a
managed PostgreSQL server instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from config.errors import StorageError


class EmbeddedPostgres:
    """A handle on the embedded server; :meth:`stop` releases this process's claim on it."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return the URL of its ``postgres`` database."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The unprivileged server user must be able to reach its directory (search
            # permission on every parent), while PostgreSQL insists the cluster itself is 0700.
            for parent in self.pgdata.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
            if self.pgdata.stat().st_mode & 0o077:
                self.pgdata.chmod(0o700)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver

                self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:  # pgserver raises bare Exceptions and subprocess errors
            raise StorageError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}. "
                f"See {self.pgdata / 'log'} for the server's own log, or set database_url "
                "(JISR_DATABASE_URL) to use an existing PostgreSQL server."
            ) from exc
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def database_url(base_url: str, database: str) -> str:
    """``base_url`` with its database name replaced by ``database`` (query kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))
