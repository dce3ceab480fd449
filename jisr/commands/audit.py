"""``jisr audit``: the auditor's offline tool for message-log archives.

Rules: every subcommand works on files only (an archive, a directory of archives, or an
exported container) and needs no node, database or network. ``verify`` exits 0 when every item
verified, 1 when any check failed, and 2 when the input could not be verified at all (no such
path, an unreadable anchor). Searching a live node's log is not offered: the node's admin API
has no message-log route yet, so search works on archives.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from audit.errors import AuditError
from audit.report import Report
from audit.search import Criteria, describe, export, load, search
from audit.verifier import verify_path
from config.errors import JisrError
from gateway.anchor import Anchor

__all__ = ["audit"]

_MAX_INPUT_BYTES = 1024 * 1024

_path_argument = click.argument(
    "path", type=click.Path(exists=False, path_type=Path), metavar="PATH"
)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_INPUT_BYTES:
            _fail(f"{path} is too large to be {what}")
        return path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror or exc}")


def _time(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time such as 2026-11-01 or 2026-11-01T12:00:00Z",
            param_hint=option,
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@click.group()
def audit() -> None:
    """Verify, search, show and export archived message-log evidence, offline."""


def _print_report(report: Report, *, verbose: bool) -> None:
    for item in report.items:
        status = "OK  " if item.ok else "FAIL"
        click.echo(f"{status}  {item.where}" + (f"  ({item.label})" if item.label else ""))
        for check in item.checks:
            if verbose or not check.ok:
                mark = "ok" if check.ok else "FAILED"
                click.echo(f"        {mark} {check.name}: {check.detail}")
    if report.notes:
        click.echo("notes:")
        for note in report.notes:
            click.echo(f"  - {note}")
    click.echo(report.summary())


@audit.command("verify")
@_path_argument
@click.option(
    "--anchor",
    "anchor_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The registry's configuration anchor, obtained out of band (default: the archive's).",
)
@click.option(
    "--ocsp",
    "ocsp_paths",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A DER OCSP response obtained elsewhere, e.g. one showing a revocation (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Print every check, not only failures.")
def verify(
    path: Path,
    anchor_path: Path | None,
    ocsp_paths: tuple[Path, ...],
    as_json: bool,
    verbose: bool,
) -> None:
    """Verify an archive, a directory of archives, or an exported container."""
    anchor = None
    if anchor_path is not None:
        try:
            anchor = Anchor.from_bytes(_read_small(anchor_path, "an anchor file"))
        except JisrError as exc:
            _fail(f"{anchor_path} is not a configuration anchor: {exc.message}")
    extra = [_read_small(p, "an OCSP response") for p in ocsp_paths]
    try:
        report = verify_path(path, anchor=anchor, extra_ocsp=extra)
    except AuditError as exc:
        _fail(exc.message)
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report, verbose=verbose)
    raise SystemExit(0 if report.ok else 1)


def _criteria_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--message-id", help="The X-Road message id."),
            click.option("--client", help="The client, e.g. IQ/GOV/HJC/inheritance."),
            click.option("--service", help="The service, e.g. IQ/GOV/NDC/population/getCitizen."),
            click.option("--user-id", help="The user id the client system sent."),
            click.option("--issue", help="The issue (case) the client system sent."),
            click.option("--since", help="Created at or after this time (UTC unless given)."),
            click.option("--until", help="Created before this time (UTC unless given)."),
        ]
    ):
        command = option(command)
    return command


@audit.command("search")
@_path_argument
@_criteria_options
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON.")
def search_command(
    path: Path,
    message_id: str | None,
    client: str | None,
    service: str | None,
    user_id: str | None,
    issue: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find exchanges in archives by id, client, service, user id, issue or time."""
    criteria = Criteria(
        message_id=message_id,
        client=client,
        service=service,
        user_id=user_id,
        issue=issue,
        since=_time(since, "--since"),
        until=_time(until, "--until"),
    )
    try:
        found = search(path, criteria, limit=limit)
    except AuditError as exc:
        _fail(exc.message)
    if as_json:
        click.echo(json.dumps([f.to_json() for f in found], ensure_ascii=False, indent=2))
        return
    for f in found:
        when = f.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        extras = " ".join(
            part
            for part in (
                f"user={f.user_id}" if f.user_id else "",
                f"issue={f.issue}" if f.issue else "",
                "+".join(f.roles),
            )
            if part
        )
        click.echo(f"{when}  {f.message_id}  {f.client} -> {f.service}  {extras}  {f.where}")
    click.echo(f"{len(found)} exchange container(s) found", err=True)


@audit.command("show")
@_path_argument
@click.option("--message-id", required=True, help="The X-Road message id.")
@click.option("--client", help="The client, when several clients used the same id.")
def show(path: Path, message_id: str, client: str | None) -> None:
    """Show an exchange as archived (run verify to check it)."""
    try:
        found = search(path, Criteria(message_id=message_id, client=client))
        if not found:
            _fail(f"no exchange with message id {message_id!r} in {path}")
        for f in found:
            click.echo(f"== {f.where}")
            for line in describe(load(f)):
                click.echo(line)
    except JisrError as exc:
        _fail(exc.message)


@audit.command("export")
@_path_argument
@click.option("--message-id", required=True, help="The X-Road message id.")
@click.option("--client", help="The client, when several clients used the same id.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the container (.asice).",
)
def export_command(path: Path, message_id: str, client: str | None, output: Path) -> None:
    """Write one exchange's evidence, with its trust material, as a standalone container."""
    try:
        data, sources = export(path, message_id, client)
    except JisrError as exc:
        _fail(exc.message)
    directory = output.parent if str(output.parent) else Path()
    fd, temp = tempfile.mkstemp(prefix=".export-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, output)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(
        f"wrote {output} ({len(data)} bytes) from {', '.join(s.where for s in sources)}; "
        f"check it with: jisr audit verify {output}"
    )
