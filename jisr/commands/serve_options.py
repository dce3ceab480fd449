"""Options every trust service's ``serve`` command takes: its key file and where to listen.

Rules: the key file is named with ``--key`` and must be encrypted; the passphrase is never an
option value, only the *name* of the environment variable holding it
(``--key-passphrase-env``). Servers listen on 127.0.0.1 unless told otherwise, on a port the
system chooses unless one is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def key_file_options(whose: str) -> Callable[[F], F]:
    """``--key`` (as ``key_path``) and ``--key-passphrase-env`` for ``whose`` key."""

    def add(command: F) -> F:
        command = click.option(
            "--key-passphrase-env",
            metavar="VAR",
            help="Name of the environment variable holding the key's passphrase.",
        )(command)
        return click.option(
            "--key",
            "key_path",
            required=True,
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help=f"The {whose} private key (PKCS#8, encrypted; a plain key is refused).",
        )(command)

    return add


def listen_options(command: F) -> F:
    """``--host`` and ``--port``."""
    command = click.option(
        "--port",
        default=0,
        show_default=True,
        type=click.IntRange(0, 65535),
        help="0: any free port.",
    )(command)
    return click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(command)
