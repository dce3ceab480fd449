"""``jisr demo``: the demo network on this machine, on the embedded default."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from config.errors import JisrError
from jisr.demo.network import DEFAULT_DATA_DIR
from jisr.demo.run import run_demo
from jisr.processes import stop_on_signals


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where the demo keeps its CA, registry, nodes, database and network.json.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Run the checks and exchanges, print the results and exit (0 only if all passed).",
)
@click.option(
    "--http-port",
    type=int,
    default=8080,
    show_default=True,
    help="Client-side HTTP port of the HJC/NPA node (0: any free port).",
)
@click.option(
    "--https-port",
    type=int,
    default=8443,
    show_default=True,
    help="Client-side HTTPS port of the HJC/NPA node (0: any free port).",
)
def demo(data_dir: Path, once: bool, http_port: int, https_port: int) -> None:
    """Start the demo network: CA, OCSP, TSA, registry, nodes and sample services."""

    async def main() -> bool:
        with stop_on_signals() as stop:
            return await run_demo(
                data_dir, once=once, stop=stop, http_port=http_port, https_port=https_port
            )

    try:
        ok = asyncio.run(main())
    except JisrError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)
