"""``jisr demo``: the demo network on this machine, on the embedded default."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from config.errors import JisrError
from jisr.demo.network import DEFAULT_DATA_DIR
from jisr.demo.run import run_demo


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
def demo(data_dir: Path, once: bool) -> None:
    """Start the demo network: CA, OCSP, TSA, registry, nodes and sample services."""
    stop = asyncio.Event()

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_demo(data_dir, once=once, stop=stop)

    try:
        ok = asyncio.run(main())
    except JisrError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)
