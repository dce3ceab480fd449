"""Typed settings, loaded once from a TOML file and ``JISR_*`` environment variables.

Resolution order (later wins): built-in defaults, the TOML file, environment variables named
``JISR_<SECTION>_<FIELD>`` (for example ``JISR_DATABASE_URL``, ``JISR_REGISTRY_PORT``).
The result is a tree of frozen dataclasses; code receives it as an argument or from the
aiohttp application, never reads ``os.environ`` itself.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from config.errors import ConfigError

DEFAULT_DATA_DIR = Path("jisr-data")


#: The log periods an archive may cover (``archive_period``).
ARCHIVE_PERIODS: Final = ("hour", "day")
#: How the message log stores bodies (``log_body_compression``).
BODY_COMPRESSIONS: Final = ("auto", "lz4", "pglz", "none")
#: The longest ``archive_interval_s``: a week.
MAX_ARCHIVE_INTERVAL_S: Final = 7 * 86_400
#: The longest ``registry.conf_keep_days``: a century, far beyond any need, well inside dates.
MAX_CONF_KEEP_DAYS: Final = 36_500
#: The largest ``registry.conf_keep_versions`` (PostgreSQL's integer, which holds versions).
MAX_CONF_KEEP_VERSIONS: Final = 2**31 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where PostgreSQL is. With ``url`` empty, an embedded server runs in the data directory."""

    url: str = ""
    min_pool: int = 1
    max_pool: int = 10


@dataclasses.dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``format`` is ``console`` (readable), ``json`` (production) or ``auto`` (by terminal)."""

    format: str = "auto"
    level: str = "info"


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrySettings:
    """The central registry's own settings; the instance-wide ones live in its database."""

    instance: str = "IQ"
    host: str = "127.0.0.1"
    port: int = 4400
    public_url: str = ""
    key_passphrase_env: str = "JISR_REGISTRY_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
    conf_regenerate_interval_s: int = 60
    conf_expiry_s: int = 600
    ocsp_freshness_s: int = 3600
    timestamping_interval_s: int = 60
    auto_approve: bool = False
    #: Old configuration versions are pruned (docs/registry.md) unless they are among the
    #: newest ``conf_keep_versions`` or generated less than ``conf_keep_days`` days ago; the
    #: newest version and any version not yet expired are always kept.
    conf_keep_versions: int = 10
    conf_keep_days: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.conf_keep_versions <= MAX_CONF_KEEP_VERSIONS:
            raise ConfigError(
                f"registry conf_keep_versions {self.conf_keep_versions} must be at least 1 (the "
                f"newest version is always kept) and at most {MAX_CONF_KEEP_VERSIONS}"
            )
        if not 0 <= self.conf_keep_days <= MAX_CONF_KEEP_DAYS:
            raise ConfigError(
                f"registry conf_keep_days {self.conf_keep_days} must be 0 (keep by count only) "
                f"to {MAX_CONF_KEEP_DAYS} days"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSettings:
    """A security server node. Ports follow X-Road's defaults; 0 asks the OS for a free port."""

    server_id: str = ""
    host: str = "127.0.0.1"
    client_http_port: int = 8080
    client_https_port: int = 8443
    server_port: int = 5500
    admin_port: int = 4000
    #: Address other nodes use to reach this node's server side, as ``host:port``.
    public_address: str = ""
    key_passphrase_env: str = "JISR_NODE_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
    conf_poll_s: int = 60
    service_timeout_s: int = 30
    connect_timeout_s: int = 5
    max_body_bytes: int = 10 * 1024 * 1024
    #: Processes serving the node. Only 1 is accepted: the node's message log has one hash
    #: chain and one writer (docs/performance.md says what several processes would need).
    workers: int = 1
    # -- message log, timestamping and archives (docs/message-log.md, archives-and-audit.md)
    #: Keep message bodies in the log; false keeps their SHA-256 only (the node's privacy switch).
    log_bodies: bool = True
    #: How PostgreSQL stores logged bodies: ``lz4`` (the server must support it), ``pglz``
    #: (PostgreSQL's default), ``none`` (uncompressed), or ``auto`` (lz4 where the server has
    #: it, else pglz). See docs/performance.md for what each costs.
    log_body_compression: str = "auto"
    #: Wait for the record's timestamp before an exchange continues (a TSA call per message).
    timestamp_immediately: bool = False
    #: Records may wait this long for a timestamp before the node refuses exchanges (X-Road's).
    timestamp_failure_period_s: int = 14_400
    #: Directory for archives; empty means ``<data dir>/archives``.
    archive_dir: str = ""
    #: ``s3://bucket/prefix`` archives to an S3-compatible bucket instead (needs boto3).
    archive_url: str = ""
    #: Endpoint of an S3-compatible server other than AWS, e.g. ``https://minio.example:9000``.
    archive_s3_endpoint: str = ""
    #: Log period per archive: ``hour`` or ``day``.
    archive_period: str = "hour"
    #: Seconds between archiver passes in ``jisr node serve``; 0 runs no archiver in the node
    #: (archive with ``jisr node archive --every SECONDS`` as a process of its own instead).
    archive_interval_s: int = 60
    #: Days archived records stay in the database before the retention job deletes them.
    retention_days: int = 30

    def __post_init__(self) -> None:
        if self.workers != 1:
            raise ConfigError(
                f"workers {self.workers}: a node runs as one process (workers = 1); its message "
                "log's hash chain has a single writer. Remove the setting, or set it to 1"
            )
        if self.log_body_compression not in BODY_COMPRESSIONS:
            raise ConfigError(
                f"log_body_compression {self.log_body_compression!r} must be one of "
                f"{', '.join(BODY_COMPRESSIONS)}"
            )
        if self.archive_period not in ARCHIVE_PERIODS:
            raise ConfigError(
                f"archive_period {self.archive_period!r} must be one of "
                f"{', '.join(ARCHIVE_PERIODS)}"
            )
        if not 0 <= self.archive_interval_s <= MAX_ARCHIVE_INTERVAL_S:
            raise ConfigError(
                f"archive_interval_s {self.archive_interval_s} must be 0 (no archiving in the "
                f"node; run `jisr node archive --every SECONDS`) or 1..{MAX_ARCHIVE_INTERVAL_S} "
                "seconds"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    logging: LoggingSettings = dataclasses.field(default_factory=LoggingSettings)
    registry: RegistrySettings = dataclasses.field(default_factory=RegistrySettings)
    node: NodeSettings = dataclasses.field(default_factory=NodeSettings)


T = TypeVar("T")


def _coerce(value: Any, target: Any, where: str) -> Any:
    if target is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {target!r}")


def build(cls: type[T], data: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> T:
    """Build the dataclass ``cls`` from ``data`` (TOML) overlaid with ``env``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(sorted(unknown))} in [{prefix.lower() or 'top'}]; "
            f"known: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        target = hints[field.name]
        env_name = f"JISR_{prefix}{field.name}".upper()
        where = env_name
        if dataclasses.is_dataclass(target) and isinstance(target, type):
            sub = data.get(field.name, {})
            if not isinstance(sub, Mapping):
                raise ConfigError(f"[{field.name}] must be a table")
            values[field.name] = build(target, sub, env, f"{prefix}{field.name}_")
            continue
        if isinstance(target, types.UnionType):
            raise ConfigError(f"{where}: unions are not supported in settings")
        if env_name in env:
            values[field.name] = _coerce(env[env_name], target, where)
        elif field.name in data:
            values[field.name] = _coerce(data[field.name], target, f"setting {field.name!r}")
    return cls(**values)


def load_settings(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Load settings once. ``overrides`` (command-line options) win over everything."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None and "JISR_CONFIG" in env:
        path = Path(env["JISR_CONFIG"])
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    settings = build(Settings, data, env, "")
    if overrides:
        settings = dataclasses.replace(
            settings, **{k: v for k, v in overrides.items() if v is not None}
        )
    return settings
