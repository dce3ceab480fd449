"""The global-configuration publisher: database → signed, chained, versioned documents.

Rules:

- A version is built from one read of the database, validated by
  :func:`gateway.globalconf.build_globalconf` (a registry mistake is found here, before any
  node sees it), signed with the *active* configuration signing key (detached CMS over the
  document bytes), and stored with its digest. Versions only grow: N+1 carries N's digest in
  ``previous_digest``; the store refuses any version that is not exactly the next one.
- A new version is made when the content changed (``instance.change_serial`` moved past the
  serial the latest version was built from) and in any case every ``interval`` (60 s by
  default), so that a published configuration never comes near its expiry
  (``conf_expiry_s``, 600 s by default) while the registry runs.
- The signing key list carries every non-retired key: ``active`` (signs this version) and
  ``announced`` (will sign a later one). A key becomes activatable once a version listing it
  was stored, so nodes learn it before it signs anything.
- Change detection is both in-process (the store's ``on_change`` wakes the loop at once) and
  by polling the serial every ``poll`` seconds (changes made by another process).
- After each version is stored, old versions are pruned (:meth:`Publisher.prune`): those
  neither among the newest ``keep_versions`` nor generated in the last ``keep_days`` days,
  and never one that has not expired yet. They are deleted in chunks of ``prune_chunk``
  versions, oldest first; each chunk holds the publishing lock, so it never overlaps a
  publication, and releases it, so a publication can go between two chunks of a long
  backlog. While a prune runs, the one after a publication is skipped (the next version
  starts it again). A pruning failure is logged as a warning and retried after the next
  version, and never fails the publication.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from certs.signer import SoftwareSigner
from config.errors import JisrError, ValidationError
from config.settings import MAX_CONF_KEEP_DAYS
from gateway.globalconf import (
    ApprovedCa,
    ApprovedTsa,
    GlobalConf,
    GlobalGroup,
    GlobalSettings,
    Member,
    MemberClass,
    OcspResponder,
    SecurityServer,
    SigningKey,
    build_globalconf,
    digest_of,
    sign_globalconf,
)
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId, parse_client
from registry.conf_keys import load_signer
from registry.store import (
    PRUNE_CHUNK_VERSIONS,
    ConfContent,
    ConfKey,
    ConfVersion,
    PruneResult,
    RegistryStore,
)

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cert(b64: str) -> x509.Certificate:
    return x509.load_der_x509_certificate(base64.b64decode(b64))


def build_from_content(
    content: ConfContent, *, version: int, previous_digest: str | None, now: dt.datetime
) -> GlobalConf:
    """The :class:`GlobalConf` for ``content`` (raises ``MalformedGlobalConf`` on a mistake)."""
    s = content.settings
    instance = s.instance_id
    members = []
    for m in content.members:
        member_id = MemberId.parse(m["id"])
        subs = tuple(
            SubsystemId(instance, member_id.member_class, member_id.member_code, code)
            for code in m["subsystems"]
        )
        members.append(Member(member_id, m["name"], subs))
    servers = [
        SecurityServer(
            SecurityServerId.parse(srv["id"]),
            srv["address"],
            tuple(_cert(c) for c in srv["auth_certs"]),
            tuple(parse_client(c) for c in srv["clients"]),
        )
        for srv in content.security_servers
    ]
    cas = []
    for ca in content.approved_cas:
        root = _cert(ca["certificate"])
        cas.append(
            ApprovedCa(
                ca["name"],
                root,
                tuple(_cert(c) for c in ca["intermediates"]),
                tuple(
                    # Without a delegated responder certificate the CA answers itself.
                    OcspResponder(o["url"], _cert(o["certificate"]) if o["certificate"] else root)
                    for o in ca["ocsp"]
                ),
                ca["profile"],
            )
        )
    return build_globalconf(
        instance,
        version,
        now,
        dt.timedelta(seconds=s.conf_expiry_s),
        previous_digest,
        GlobalSettings(
            ocsp_freshness_s=s.ocsp_freshness_s,
            timestamping_interval_s=s.timestamping_interval_s,
            conf_expiry_s=s.conf_expiry_s,
            conf_refresh_s=s.conf_refresh_s,
        ),
        [MemberClass(c["code"], c["description"]) for c in content.member_classes],
        members,
        servers,
        cas,
        [ApprovedTsa(t["name"], t["url"], _cert(t["certificate"])) for t in content.approved_tsas],
        [
            GlobalGroup(g["code"], g["description"], tuple(parse_client(c) for c in g["members"]))
            for g in content.global_groups
        ],
        [
            SigningKey(
                x509.load_der_x509_certificate(k.certificate),
                "active" if k.state == "active" else "announced",
            )
            for k in content.signing_keys
        ],
    )


async def prune_old_versions(
    store: RegistryStore,
    *,
    actor: str,
    keep_versions: int,
    keep_days: int,
    now: dt.datetime,
    dry_run: bool = False,
    chunk_size: int = PRUNE_CHUNK_VERSIONS,
    guard: contextlib.AbstractAsyncContextManager[Any] | None = None,
    after_chunk: Callable[[PruneResult], Awaitable[None]] | None = None,
) -> PruneResult:
    """Prune by the retention settings; see :meth:`RegistryStore.prune_versions` for the rules.

    In the registry process, call :meth:`Publisher.prune` instead (it holds the publishing
    lock for each chunk); from another process this is safe too, as the store's table lock
    keeps each chunk and a publication apart.
    """
    if (
        isinstance(keep_days, bool)
        or not isinstance(keep_days, int)
        or not 0 <= keep_days <= MAX_CONF_KEEP_DAYS
    ):
        raise ValidationError(
            f"keep_days {keep_days!r} must be a whole number of days from 0 to {MAX_CONF_KEEP_DAYS}"
        )
    return await store.prune_versions(
        actor,
        keep_versions=keep_versions,
        keep_since=now - dt.timedelta(days=keep_days),
        now=now,
        dry_run=dry_run,
        chunk_size=chunk_size,
        guard=guard,
        after_chunk=after_chunk,
    )


class Publisher:
    """Makes and stores configuration versions; :meth:`run` is the background task."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        data_dir: Path,
        passphrase: bytes,
        interval_s: float = 60.0,
        poll_s: float = 2.0,
        keep_versions: int = 10,
        keep_days: int = 7,
        prune_chunk: int = PRUNE_CHUNK_VERSIONS,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        #: The retention of old versions (``registry.conf_keep_versions``, ``conf_keep_days``).
        self.keep_versions = keep_versions
        self.keep_days = keep_days
        #: Old versions deleted per transaction (and per hold of the publishing lock).
        self.prune_chunk = prune_chunk
        self._prunes_running = 0
        self.data_dir = data_dir
        self._passphrase = passphrase
        self.interval = dt.timedelta(seconds=interval_s)
        self.poll_s = poll_s
        self.clock = clock
        self._signers: dict[str, SoftwareSigner] = {}
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        #: Set whenever a version was stored; tests and the server wait on it.
        self.published = asyncio.Event()

    def notify_change(self) -> None:
        """The store's ``on_change`` callback: regenerate as soon as possible."""
        self._changed.set()

    def _signer(self, key: ConfKey) -> SoftwareSigner:
        signer = self._signers.get(key.key_id)
        if signer is None:
            cert = x509.load_der_x509_certificate(key.certificate)
            signer = load_signer(self.data_dir, key.key_ref, cert, self._passphrase)
            self._signers[key.key_id] = signer
        return signer

    async def publish(self, *, prune: bool = True) -> ConfVersion:
        """Build, sign and store the next version now, whether or not anything changed.

        With ``prune``, old versions are pruned before this returns; a pruning failure is
        only logged. :meth:`run` passes ``prune=False`` and prunes in a task of its own.
        """
        async with self._lock:
            content = await self.store.conf_content()
            active = await self.store.active_conf_key()
            latest = await self.store.latest_version()
            now = self.clock()
            conf = build_from_content(
                content,
                version=1 if latest is None else latest.version + 1,
                previous_digest=None if latest is None else latest.digest,
                now=now,
            )
            document, signature = sign_globalconf(conf, self._signer(active), now=now)
            version = ConfVersion(
                version=conf.version,
                document=document,
                signature=signature,
                digest=digest_of(document),
                previous_digest=conf.previous_digest,
                signing_key_id=active.key_id,
                # Read in the same snapshot as the content it describes.
                change_serial=content.settings.change_serial,
                generated_at=conf.generated_at,
                expires_at=conf.expires_at,
            )
            await self.store.store_version(version, [k.key_id for k in content.signing_keys])
        log.info(
            "global configuration published",
            version=version.version,
            digest=version.digest,
            signing_key=active.key_id,
        )
        self.published.set()
        if prune:
            await self._prune_after_publishing()
        return version

    async def prune(
        self,
        *,
        actor: str = "publisher",
        dry_run: bool = False,
        after_chunk: Callable[[PruneResult], Awaitable[None]] | None = None,
    ) -> PruneResult:
        """Remove the old versions the retention lets go (in a dry run, only count them).

        Each chunk of ``prune_chunk`` versions holds the publishing lock; ``after_chunk`` is
        awaited between chunks, with the lock released.
        """
        running = not dry_run  # a dry run does not hold back the prune after a publication
        self._prunes_running += running
        try:
            return await prune_old_versions(
                self.store,
                actor=actor,
                keep_versions=self.keep_versions,
                keep_days=self.keep_days,
                now=self.clock(),
                dry_run=dry_run,
                chunk_size=self.prune_chunk,
                guard=self._lock,
                after_chunk=after_chunk,
            )
        finally:
            self._prunes_running -= running

    async def _prune_after_publishing(self) -> None:
        if self._prunes_running:
            log.debug("a prune of old global configuration versions is under way; not another")
            return
        try:
            result = await self.prune()
        except Exception as exc:  # pruning must never fail publishing; retried next version
            log.warning(
                "old global configuration versions not pruned; retried after the next version",
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        if result.removed:
            log.info(
                "old global configuration versions pruned",
                removed=result.removed,
                oldest_version=result.oldest_version,
                newest_version=result.newest_version,
                kept=result.kept,
                chunks=result.chunks,
            )
        else:
            log.debug("no global configuration version to prune", kept=result.kept)

    async def publish_if_due(self, *, prune: bool = True) -> ConfVersion | None:
        """Publish when the content changed or the latest version is ``interval`` old
        (``prune`` as for :meth:`publish`)."""
        latest = await self.store.latest_version()
        if latest is not None:
            serial = (await self.store.settings()).change_serial
            age = self.clock() - latest.generated_at
            if serial <= latest.change_serial and age < self.interval:
                return None
        return await self.publish(prune=prune)

    async def run(self) -> None:
        """Publish forever; errors are logged and retried on the next tick, never fatal.

        Old versions are pruned by a task of its own, once at the start and after each
        publication (never two at a time), so that a long prune (a backlog after an upgrade)
        holds the next publication up for at most one chunk, not until it ends.
        """
        pruning: asyncio.Task[None] | None = None

        def prune_in_background() -> None:
            nonlocal pruning
            if pruning is None or pruning.done():
                pruning = asyncio.create_task(
                    self._prune_after_publishing(), name="globalconf-prune"
                )

        try:
            prune_in_background()
            while True:
                self._changed.clear()
                try:
                    if await self.publish_if_due(prune=False) is not None:
                        prune_in_background()
                except JisrError as exc:
                    log.error("global configuration not published", error=str(exc))
                except Exception as exc:  # a bug must not stop publishing for good; retried
                    # Logged without the traceback's local variables, which hold key material.
                    log.error(
                        "global configuration not published (unexpected error)",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self.poll_s)
        finally:
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning
