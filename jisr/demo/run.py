"""Running the demo: start the network, run the checks, print what was seen, keep running."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from pathlib import Path

import aiohttp
import click
from cryptography import x509

from adapters.sample_services import run_sample_services
from certs.tsa import MessageImprint, verify_token
from gateway.anchor import Anchor
from gateway.globalconf import GlobalConf, GlobalConfPointer, verify_globalconf
from jisr.demo.evidence import archive_and_verify
from jisr.demo.exchanges import (
    DECEASED_CITIZEN,
    DIPLOMA_NUMBER,
    EXCHANGES,
    GET_CITIZEN,
    LIVING_CITIZEN,
)
from jisr.demo.members import INHERITANCE, NODES
from jisr.demo.network import (
    Endpoints,
    TrustServices,
    embedded_postgres,
    prepare_data_dir,
    registry,
    trust_services,
    utc_now,
)
from jisr.demo.nodes import running_nodes, set_up_node, wait_until_published
from trust_services.ocsp_client import fetch_verdict
from trust_services.tsa_client import request_timestamp

_OCSP_MAX_AGE = dt.timedelta(hours=1)


@dataclasses.dataclass
class Check:
    """One expected result of the demo and whether it was seen."""

    name: str
    ok: bool
    detail: str


class Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        mark = click.style("✔", fg="green") if ok else click.style("✘", fg="red")
        click.echo(f"  {mark} {name}")
        for line in detail.splitlines():
            click.echo(f"      {line}")

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


async def download_globalconf(
    session: aiohttp.ClientSession, anchor: Anchor, *, previous: GlobalConf | None = None
) -> GlobalConf:
    """Fetch and verify the configuration the way a node does on its first poll."""
    pointer_url = anchor.sources[0].url
    async with session.get(pointer_url) as resp:
        resp.raise_for_status()
        pointer = GlobalConfPointer.from_bytes(await resp.read())
    doc_url, sig_url = pointer.urls(pointer_url)
    async with session.get(doc_url) as resp:
        resp.raise_for_status()
        document = await resp.read()
    async with session.get(sig_url) as resp:
        resp.raise_for_status()
        signature = await resp.read()
    return verify_globalconf(document, signature, anchor=anchor, previous=previous, now=utc_now())


async def check_trust_services(
    session: aiohttp.ClientSession, trust: TrustServices, report: Report
) -> None:
    """Ask the OCSP responder and the TSA as a node would, and verify their answers."""
    ca = trust.ca
    tsa_cert = x509.load_der_x509_certificate(trust.tsa_cert)
    try:
        verdict = await fetch_verdict(
            session, trust.ocsp_url, tsa_cert, ca.issuer_certificate, max_age=_OCSP_MAX_AGE
        )
        report.add(
            "OCSP responder answers and its response verifies",
            verdict.status.state == "good",
            f"TSA certificate status: {verdict.status.state}, "
            f"next update {verdict.next_update:%H:%M:%S} UTC",
        )
    except Exception as exc:  # reported, not raised
        report.add("OCSP responder answers", False, str(exc))
    try:
        data = "جسر — Jisr demo".encode()
        token = await request_timestamp(session, trust.tsa_url, MessageImprint.of(data))
        info = verify_token(token, data=data, tsa_certs=[tsa_cert], at=utc_now())
        report.add(
            "TSA issues a timestamp token that verifies",
            True,
            f"token serial {info.serial}, time {info.gen_time:%H:%M:%S.%f} UTC",
        )
    except Exception as exc:  # reported, not raised
        report.add("TSA issues a timestamp token", False, str(exc))


async def run_demo(
    data_dir: Path,
    *,
    once: bool,
    stop: asyncio.Event,
    http_port: int = 8080,
    https_port: int = 8443,
) -> bool:
    """Bring the network up, check it, print the endpoints; with ``once`` stop afterwards."""
    started = time.monotonic()
    data_dir = prepare_data_dir(data_dir)
    report = Report()
    endpoints = Endpoints(data_dir=data_dir)
    now = utc_now()
    click.echo(f"Jisr demo network, data directory {data_dir}")
    async with contextlib.AsyncExitStack() as stack:
        click.echo("Starting the embedded PostgreSQL ...")
        server_url = await stack.enter_async_context(embedded_postgres(data_dir))
        click.echo("Creating the demo CA, its OCSP responder and TSA ...")
        trust = await stack.enter_async_context(trust_services(data_dir, now=now))
        endpoints.ocsp, endpoints.tsa = trust.ocsp_url, trust.tsa_url
        click.echo("Starting the central registry with the demo members ...")
        reg = await stack.enter_async_context(registry(data_dir, server_url, trust, now=now))
        endpoints.registry = reg.url
        endpoints.globalconf = reg.url + "/globalconf/current"
        endpoints.anchor_file = str(reg.anchor_path)
        endpoints.anchor_digest = reg.anchor_digest
        endpoints.operator_api_key_file = str(reg.api_key_path)
        samples = await stack.enter_async_context(await run_sample_services())
        endpoints.sample_services = samples.base_url
        endpoints.sample_national_ids = {
            "living": LIVING_CITIZEN,
            "deceased": DECEASED_CITIZEN,
            "diploma": DIPLOMA_NUMBER,
        }
        session = await stack.enter_async_context(aiohttp.ClientSession())
        anchor_bytes = reg.anchor_path.read_bytes()

        click.echo("Setting up the nodes (keys, certificates, registration, services) ...")
        layout = []
        for spec in NODES:
            directory = data_dir / "nodes" / spec.name
            fixed = spec.client_http_port != 0
            await set_up_node(
                spec,
                directory,
                anchor=anchor_bytes,
                server_url=server_url,
                trust=trust,
                session=session,
                sample_base_url=samples.base_url,
                http_port=http_port if fixed else 0,
                https_port=https_port if fixed else 0,
                now=now,
            )
            layout.append((spec, directory))
        await wait_until_published(layout[0][1], NODES, session)
        click.echo("Starting the nodes (jisr node serve) ...")
        nodes = await stack.enter_async_context(running_nodes(layout, data_dir / "logs"))
        for running in nodes:
            endpoints.nodes[str(running.spec.server_id)] = {
                k: str(v) for k, v in running.endpoints.items()
            }
        network_file = endpoints.write()
        consumer = next(n for n in nodes if n.spec.client_http_port)
        consumer_url = str(consumer.endpoints["client_http"])

        click.echo("\nChecks:")
        anchor = Anchor.from_bytes(anchor_bytes)
        try:
            conf = await download_globalconf(session, anchor)
            report.add(
                "global configuration downloaded and verified as a node does",
                True,
                f"version {conf.version}, {len(conf.members)} members, "
                f"{len(conf.security_servers)} nodes, {len(conf.approved_cas)} approved CA, "
                f"{len(conf.tsas)} approved TSA, expires {conf.expires_at:%H:%M:%S} UTC",
            )
        except Exception as exc:  # the demo reports every failure instead of dying
            report.add("global configuration downloaded and verified", False, str(exc))
        await check_trust_services(session, trust, report)

        click.echo(f"\nExchanges through {consumer_url} (node {consumer.spec.server_id}):")
        for exchange in EXCHANGES:
            try:
                outcome = await exchange(consumer_url, session)
                report.add(outcome.name, outcome.ok, outcome.detail)
            except Exception as exc:  # reported, not raised
                report.add(
                    exchange.__name__.replace("_", " "), False, f"{type(exc).__name__}: {exc}"
                )

        click.echo("\nEvidence for auditors:")
        try:
            node_dirs = [running.directory for running in nodes]
            ok, detail = await archive_and_verify(node_dirs, reg.anchor_path)
            report.add(
                "message logs archived (jisr node archive) and verified (jisr audit verify)",
                ok,
                detail,
            )
        except Exception as exc:  # reported, not raised
            report.add("message logs archived and verified", False, f"{type(exc).__name__}: {exc}")

        click.echo("\nThe network:")
        click.echo(f"  registry          {endpoints.registry}")
        click.echo(f"  global conf       {endpoints.globalconf}")
        click.echo(f"  OCSP responder    {endpoints.ocsp}")
        click.echo(f"  TSA               {endpoints.tsa}")
        click.echo(f"  sample services   {endpoints.sample_services}")
        for running in nodes:
            eps = running.endpoints
            click.echo(
                f"  node {running.spec.server_id!s:<18} client {eps.get('client_http')} "
                f"/ {eps.get('client_https')}, server {eps.get('server')}, admin {eps.get('admin')}"
            )
        click.echo(f"  anchor            {endpoints.anchor_file}  ({endpoints.anchor_digest})")
        click.echo(f"  operator API key  {endpoints.operator_api_key_file}")
        click.echo(f"  node logs         {data_dir / 'logs'}")
        click.echo(f"  archives          {data_dir / 'nodes'}/<node>/archives")
        click.echo(f"  all endpoints     {network_file}")
        click.echo("\nTry it:")
        click.echo(
            f"  curl -H 'X-Road-Client: {INHERITANCE}' "
            f"{consumer_url}/r1/{GET_CITIZEN}/citizens/{LIVING_CITIZEN}"
        )
        elapsed = time.monotonic() - started
        verdict = "all checks passed" if report.ok else "SOME CHECKS FAILED"
        click.echo(f"\n{verdict} ({len(report.checks)} checks, {elapsed:.1f} s)")
        if not once:
            click.echo("The network keeps running; press Ctrl+C to stop it.")
            await stop.wait()
            click.echo("Stopping ...")
    return report.ok
