"""The ``jisr`` command.

Each group lives in its own module under ``jisr.commands`` and is registered here. Settings are
loaded once, in :func:`main`'s group callback, and handed to subcommands through click's context.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from config.errors import JisrError
from config.logging import configure_logging
from config.settings import Settings, load_settings

#: (module, attribute) of each subcommand group; a module that is absent is skipped.
_GROUPS = [
    ("jisr.commands.pki", "pki"),
    ("jisr.commands.ocsp", "ocsp"),
    ("jisr.commands.tsa", "tsa"),
    ("jisr.commands.registry", "registry"),
    ("jisr.commands.demo", "demo"),
    ("jisr.commands.node", "node"),
    ("jisr.commands.audit", "audit"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML settings file (default: $JISR_CONFIG, else built-in defaults).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default=None,
    help="Log rendering (default: readable on a terminal, JSON otherwise).",
)
@click.version_option(package_name="jisr")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_format: str | None) -> None:
    """Jisr: a government data-exchange layer in the X-Road family."""
    try:
        settings = load_settings(config_path)
    except JisrError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(log_format or settings.logging.format, settings.logging.level)
    ctx.obj = settings


def settings_of(ctx: click.Context) -> Settings:
    """The settings loaded by the group callback."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


for _module, _attr in _GROUPS:
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
        continue
    cli.add_command(getattr(_mod, _attr))


def main() -> None:
    """Console entry point: Jisr errors become one clear line and exit status 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except JisrError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
