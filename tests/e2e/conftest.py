"""One node network for every end-to-end test of this package.

The network (registry, trust services, sample and extra services in this process; three
``jisr node serve`` processes) comes up once, in the package's event loop, and is stopped
after the last test. Test modules here must run in that loop: they are marked
``pytest.mark.asyncio(loop_scope="package")``.

Its files live outside pytest's temporary root: pytest prunes old roots when another session
starts, which would delete a running PostgreSQL's or node's files.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.e2e.network import E2eNetwork, running_e2e_network


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def network() -> AsyncIterator[E2eNetwork]:
    directory = Path(tempfile.mkdtemp(prefix="jisr-e2e-"))
    try:
        async with running_e2e_network(directory / "network") as started:
            yield started
    finally:
        shutil.rmtree(directory, ignore_errors=True)
