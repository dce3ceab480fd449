"""``jisr audit``: the auditor's tool for message-log archives, and for a node's live log.

Rules: ``verify`` and ``export`` work on files only (an archive, a directory of archives, or an
exported container) and need no node, database or network. ``verify`` exits 0 when every item
verified, 1 when any check failed, and 2 when the input could not be verified at all (no such
path, an unreadable anchor). ``search`` and ``show`` read archives too, or, with
``--node URL``, a running node's log through its admin API with an auditor API key taken from
the environment variable ``--api-key-env`` names (never from the command line, never
printed). What a node answers is its claim: ``show`` checks each record's hash and body digest,
and archives are what ``verify`` proves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import click
from cryptography import x509

from audit.errors import AuditError
from audit.report import Report
from audit.search import Criteria, describe, export, load, search
from audit.verifier import verify_path
from config.errors import JisrError
from config.files import write_atomically
from gateway.anchor import Anchor
from gateway.faults import FaultError
from gateway.log_record import chain_hash, check_entry, parse_record
from gateway.transport import RequestPart, parse_signed_part

__all__ = ["audit"]

_MAX_INPUT_BYTES = 1024 * 1024
#: Largest admin API answer read (a record with a 10 MiB body is about 14 MiB of JSON).
_MAX_ANSWER_BYTES = 64 * 1024 * 1024
_API_TIMEOUT_S = 60.0
_DEFAULT_KEY_ENV = "JISR_AUDIT_API_KEY"

_path_argument = click.argument(
    "path", type=click.Path(exists=False, path_type=Path), metavar="PATH"
)
_optional_path_argument = click.argument(
    "path", type=click.Path(exists=False, path_type=Path), metavar="[PATH]", required=False
)


def _node_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option(
                "--node",
                "node_url",
                metavar="URL",
                help="Read a running node's log through its admin API (e.g. "
                "http://127.0.0.1:4000) instead of archives.",
            ),
            click.option(
                "--api-key-env",
                default=_DEFAULT_KEY_ENV,
                show_default=True,
                metavar="VAR",
                help="Environment variable holding an auditor API key of that node.",
            ),
        ]
    ):
        command = option(command)
    return command


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
@_optional_path_argument
@_node_options
@_criteria_options
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON.")
def search_command(
    path: Path | None,
    node_url: str | None,
    api_key_env: str,
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
    """Find exchanges in archives (PATH) or in a node's live log (--node) by id, client,
    service, user id, issue or time."""
    if _source(path, node_url) is None:
        assert node_url is not None
        query = {
            "message_id": message_id,
            "client": client,
            "service": service,
            "user_id": user_id,
            "issue": issue,
            "since": _iso(_time(since, "--since")),
            "until": _iso(_time(until, "--until")),
            "limit": str(min(limit, 1000)),
        }
        answer = _node_get(node_url, api_key_env, "/message-log/records", query)
        records = _records_of(answer)
        if as_json:
            click.echo(json.dumps(records, ensure_ascii=False, indent=2))
            return
        for record in records:
            click.echo(_live_line(record))
        click.echo(f"{len(records)} record(s) found in the node's log", err=True)
        return
    assert path is not None
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
@_optional_path_argument
@_node_options
@click.option("--message-id", required=True, help="The X-Road message id.")
@click.option("--client", help="The client, when several clients used the same id.")
def show(
    path: Path | None, node_url: str | None, api_key_env: str, message_id: str, client: str | None
) -> None:
    """Show an exchange as archived (PATH; run verify to check it) or as a node logged it
    (--node)."""
    if _source(path, node_url) is None:
        assert node_url is not None
        _show_live(node_url, api_key_env, message_id, client)
        return
    assert path is not None
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
    # Into an existing directory only, readable by its owner only (it holds an exchange's
    # evidence).
    if not output.parent.is_dir():
        _fail(f"cannot write {output}: {output.parent} is not a directory")
    try:
        write_atomically(output, data, mode=0o600)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(
        f"wrote {output} ({len(data)} bytes) from {', '.join(s.where for s in sources)}; "
        f"check it with: jisr audit verify {output}"
    )


# -- a node's live log, through its admin API -------------------------------------------------


def _source(path: Path | None, node_url: str | None) -> Path | None:
    """The archive path, or None for a node; exactly one of the two must be given."""
    if (path is None) == (node_url is None):
        raise click.UsageError("give either PATH (archives) or --node URL (a running node)")
    return path


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _api_base(node_url: str) -> str:
    base = node_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        _fail(f"--node {node_url!r} is not an http:// or https:// URL of a node's admin API")
    return base.removesuffix("/api/v1")


def _api_key(env_name: str) -> str:
    key = os.environ.get(env_name, "").strip()
    if not key:
        _fail(
            f"set the environment variable {env_name} to an auditor API key of the node "
            "(`jisr node api-key create --role auditor` on the node)"
        )
    return key


def _node_get(
    node_url: str, key_env: str, path: str, query: Mapping[str, str | None] | None = None
) -> Any:
    """GET an admin API path; exits with status 2 and the node's words when it refuses."""
    url = _api_base(node_url) + "/api/v1" + path
    key = _api_key(key_env)
    params = {k: v for k, v in (query or {}).items() if v is not None}

    async def fetch() -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=_API_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, params=params, headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            body = await resp.content.read(_MAX_ANSWER_BYTES + 1)
            return resp.status, body

    try:
        status, body = asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        _fail(f"cannot reach the node's admin API at {url}: {exc or type(exc).__name__}")
    if len(body) > _MAX_ANSWER_BYTES:
        _fail(f"the node's answer from {url} is larger than {_MAX_ANSWER_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200:
        message = data.get("message") if isinstance(data, dict) else None
        hint = ""
        if status == 401:
            hint = f"; check the key in {key_env}"
        elif status == 403:
            hint = "; the message log is read with an auditor key"
        _fail(f"the node refused ({status}): {message or body[:200]!r}{hint}")
    if data is None:
        _fail(f"the node's answer from {url} is not JSON")
    return data


def _records_of(answer: Any) -> list[dict[str, Any]]:
    records = answer.get("records") if isinstance(answer, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        _fail("the node's answer has no list of records; is --node a Jisr node's admin API?")
    return records


def _live_line(record: Mapping[str, Any]) -> str:
    extras = " ".join(
        part
        for part in (
            f"user={record['user_id']}" if record.get("user_id") else "",
            f"issue={record['issue']}" if record.get("issue") else "",
            "timestamped" if record.get("timestamp") else "waiting-for-timestamp",
            "archived" if record.get("archived") else "",
        )
        if part
    )
    return (
        f"{record.get('logged_at')}  #{record.get('seq')} {record.get('direction')}  "
        f"{record.get('message_id')}  {record.get('client')} -> {record.get('service')}  {extras}"
    )


def _bytes(parts: Mapping[str, Any], name: str) -> bytes:
    value = parts.get(name)
    if not isinstance(value, str):
        raise ValueError(f"part {name} is missing")
    return base64.b64decode(value, validate=True)


def _consistency(record: Mapping[str, Any]) -> list[str]:
    """Problems with a record as the node sent it: its hash, its body, its signed part."""
    parts = record.get("parts")
    if not isinstance(parts, dict):
        return ["the node sent no record parts"]
    try:
        body = None if parts.get("body") is None else _bytes(parts, "body")
        certificates = parts.get("certificates")
        if not isinstance(certificates, list):
            raise ValueError("part certificates is missing")
        canonical = _bytes(parts, "record")
        prev_hash = bytes.fromhex(str(record.get("prev_hash")))
        record_hash = bytes.fromhex(str(record.get("record_hash")))
        parsed = parse_record(
            canonical,
            signed_part=_bytes(parts, "signed_part"),
            body=body,
            signature=_bytes(parts, "signature"),
            proof=_bytes(parts, "proof"),
            certificates=[base64.b64decode(c, validate=True) for c in certificates],
            ocsp=_bytes(parts, "ocsp"),
            prev_hash=prev_hash,
            record_hash=record_hash,
        )
    except (ValueError, binascii.Error, JisrError) as exc:
        return [f"the record cannot be read: {exc}"]
    problems = list(check_entry(parsed.entry))
    if chain_hash(prev_hash, canonical) != record_hash:
        problems.append("the record hash does not follow from the previous hash and the record")
    return problems


def _describe_live(record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The record as lines of text for a person, and what is inconsistent in it."""
    lines = [
        f"RECORD {record.get('seq')} ({record.get('direction')}), logged {record.get('logged_at')}"
    ]
    parts = record.get("parts") if isinstance(record.get("parts"), dict) else {}
    assert isinstance(parts, dict)
    try:
        part = parse_signed_part(_bytes(parts, "signed_part"))
    except (ValueError, binascii.Error, FaultError) as exc:
        lines.append(f"  the signed part cannot be read: {exc}")
        part = None
    if part is not None:
        lines.append(f"  created     {part.created_at.isoformat().replace('+00:00', 'Z')}")
        if isinstance(part, RequestPart):
            query = f"?{part.query}" if part.query is not None else ""
            lines.append(f"  protocol    {part.protocol} {part.method} {part.path}{query}")
            lines.append(f"  user id     {part.user_id or '-'}")
            lines.append(f"  issue       {part.issue or '-'}")
        else:
            lines.append(f"  status      {part.status}")
            lines.append(f"  request hash {part.request_hash}")
        for name, value in part.headers:
            lines.append(f"  header      {name}: {value}")
    certificates = parts.get("certificates")
    if isinstance(certificates, list) and certificates:
        try:
            signer = x509.load_der_x509_certificate(base64.b64decode(certificates[0]))
            lines.append(f"  signed by   {signer.subject.rfc4514_string()}")
        except (ValueError, binascii.Error):
            lines.append("  signed by   (the certificate cannot be read)")
    lines.append(f"  body sha256 {record.get('body_sha256')}")
    if parts.get("body") is None:
        lines.append("  body        (not logged: body logging was off; only its SHA-256 was kept)")
    else:
        try:
            body = _bytes(parts, "body")
            text = body.decode("utf-8")
            shown = text if len(text) <= 2000 else text[:2000] + f"... ({len(body)} bytes)"
        except UnicodeDecodeError:
            shown = f"({len(body)} bytes of binary content)"
        except (ValueError, binascii.Error):
            shown = "(the body the node sent cannot be decoded)"
        lines.append(f"  body        {shown}")
    stamp = record.get("timestamp")
    if isinstance(stamp, dict):
        lines.append(f"  timestamp   {stamp.get('gen_time')} by {stamp.get('tsa_url')}")
    else:
        lines.append("  timestamp   (waiting for the next batch)")
    lines.append(f"  archived    {'yes' if record.get('archived') else 'not yet'}")
    problems = _consistency(record)
    lines.append(
        "  consistency record hash and body digest check out"
        if not problems
        else "  consistency FAILED: " + "; ".join(problems)
    )
    return lines, problems


def _show_live(node_url: str, key_env: str, message_id: str, client: str | None) -> None:
    answer = _node_get(
        node_url,
        key_env,
        "/message-log/records",
        {"message_id": message_id, "client": client, "limit": "1000"},
    )
    records = _records_of(answer)
    if not records:
        _fail(f"no record with message id {message_id!r} in the node's log")
    first = records[0]
    click.echo(f"message id  {message_id}")
    click.echo(f"client      {first.get('client')}")
    click.echo(f"service     {first.get('service')}")
    failed = False
    for summary in records:
        seq = summary.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            _fail("the node's answer lists a record without a sequence number")
        full = _node_get(node_url, key_env, f"/message-log/records/{seq}")
        if not isinstance(full, dict):
            _fail(f"the node's answer for record {seq} is not a JSON object")
        lines, problems = _describe_live(full)
        click.echo("")
        for line in lines:
            click.echo(line)
        failed = failed or bool(problems)
    click.echo("")
    click.echo(
        "these records are the node's live log; `jisr audit verify` on its archives proves them"
    )
    if failed:
        raise SystemExit(1)
