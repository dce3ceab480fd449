"""Shared fixtures.

PostgreSQL: tests marked ``postgres`` get a fresh, empty database. By default the suite starts
one embedded server (the same ``pgserver`` binaries as the product's embedded default) in a
temporary directory; set ``JISR_TEST_DATABASE_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``) to use an existing server instead.

Logging: every test starts from the same structlog configuration and root logger; see
:func:`_same_logging_state`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from storage.embedded import EmbeddedPostgres, database_url
from tests.databases import temporary_database

#: The type of ``structlog.get_logger()``'s result: a lazy proxy that, when the configuration
#: says ``cache_logger_on_first_use``, replaces its own ``bind`` with the logger built on first use.
_LAZY_LOGGER = type(structlog.get_logger())


class _ModuleLoggers:
    """The lazy loggers held by imported modules (``log = structlog.get_logger(...)``), found
    again whenever modules have been imported since the last look."""

    def __init__(self) -> None:
        self._modules_seen = 0
        self._loggers: list[Any] = []

    def all(self) -> list[Any]:
        if len(sys.modules) != self._modules_seen:
            self._modules_seen = len(sys.modules)
            found: dict[int, Any] = {}
            for module in list(sys.modules.values()):
                if isinstance(module, types.ModuleType):
                    for value in list(vars(module).values()):
                        if type(value) is _LAZY_LOGGER:
                            found[id(value)] = value
            self._loggers = list(found.values())
        return self._loggers


_module_loggers = _ModuleLoggers()


def _is_pytests(handler: logging.Handler) -> bool:
    """pytest's own capture handlers, which it adds and removes around each test phase."""
    return type(handler).__module__ == "_pytest.logging"


@pytest.fixture(autouse=True)
def _same_logging_state() -> Iterator[None]:
    """Put logging back as it was before the test.

    Tests that run ``jisr`` in the process (click's ``CliRunner``) call ``configure_logging``,
    which replaces structlog's configuration (new processor list, level filter, output to the
    runner's temporary stderr, loggers cached on first use) and adds a root handler on that
    stream. A module's logger used while that holds keeps the logger it built, so a later
    ``structlog.testing.capture_logs`` (which swaps the processors of the configuration in
    effect) saw nothing from it. After each test: the structlog configuration restored, the
    modules' loggers made lazy again, the root logger's handlers, level and ``logging.disable``
    restored.
    """
    saved = structlog.get_config()
    processors = list(saved["processors"])
    root = logging.getLogger()
    handlers = [h for h in root.handlers if not _is_pytests(h)]
    level = root.level
    disabled = logging.root.manager.disable
    yield
    saved["processors"][:] = processors
    structlog.configure(**saved)
    for logger in _module_loggers.all():
        vars(logger).pop("bind", None)
    for handler in list(root.handlers):
        if not _is_pytests(handler) and handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.disable(disabled)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, for the whole test session."""
    configured = os.environ.get("JISR_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's own temporary root: pytest prunes old roots when another run starts,
    # which would delete a running server's files.
    directory = Path(tempfile.mkdtemp(prefix="jisr-test-pg-"))
    embedded = EmbeddedPostgres(directory)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def fresh_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database, dropped after the test."""
    async with temporary_database(pg_server_url, "t_") as name:
        yield database_url(pg_server_url, name)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session (no options), closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
