"""Entry points: the `amnex` command (dev, serve, worker, db, accounts, keys, senders, operators,
connectors, routes, crypto, privacy, simulate)."""

from __future__ import annotations

import asyncio
import getpass
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.config import Settings, load_settings
from amnex.errors import AmnexError

if TYPE_CHECKING:
    from amnex.carriers.models import Connector
    from amnex.privacy.crypto import SecretBox
    from amnex.privacy.rotation import RotationReport
    from amnex.simulators.smsc import SmscSimulator

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Amnex A2P messaging platform.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
accounts_app = typer.Typer(no_args_is_help=True, help="Client accounts.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of an account.")
senders_app = typer.Typer(no_args_is_help=True, help="Verified senders of an account.")
operators_app = typer.Typer(no_args_is_help=True, help="Named operators with admin tokens.")
connectors_app = typer.Typer(no_args_is_help=True, help="Carrier connections (SMPP accounts).")
routes_app = typer.Typer(no_args_is_help=True, help="Which connectors carry which messages.")
crypto_app = typer.Typer(
    no_args_is_help=True,
    help="The master key that wraps the keys of content, addresses and carrier passwords.",
)
privacy_app = typer.Typer(no_args_is_help=True, help="The privacy report (attestation).")
simulate_app = typer.Typer(no_args_is_help=True, help="Local carrier simulators, for testing.")
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(senders_app, name="senders")
app.add_typer(operators_app, name="operators")
app.add_typer(connectors_app, name="connectors")
app.add_typer(routes_app, name="routes")
app.add_typer(crypto_app, name="crypto")
app.add_typer(privacy_app, name="privacy")
app.add_typer(simulate_app, name="simulate")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (else AMNEX_CONFIG_FILE).", exists=True),
]
T = TypeVar("T")


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _logging(settings: Settings | None = None, level: str = "INFO") -> None:
    """Logging as `log_format` sets it: from the command's own settings when it has loaded
    them (its `--config` file included), else from the environment and `AMNEX_CONFIG_FILE`."""
    from amnex.logging_setup import configure_logging, configured_log_format

    log_format = settings.log_format if settings is not None else configured_log_format()
    configure_logging(level, json=log_format == "json")


def _run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process (dev, worker, simulator) on uvloop where it is installed.

    uvicorn already serves `amnex serve` on uvloop; the worker's SMPP traffic gains as much
    (bench/README.md: one bind at 20 ms latency reached 0.90 of window/latency on uvloop,
    0.88 on the default loop).
    """
    try:
        import uvloop
    except ImportError:  # uvloop does not build everywhere (Windows): the default loop works
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _with_db(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from amnex.db.engine import Database

    async def run() -> T:
        db = Database(settings)
        try:
            async with db.unit_of_work() as session:
                return await work(session)
        finally:
            await db.dispose()

    return asyncio.run(run())


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where the database and dev.json live.")] = Path(
        ".amnex"
    ),
) -> None:
    """Everything in one process on SQLite, with local carrier simulators."""
    from amnex.devserver import run_dev

    _logging()
    _run_service(run_dev(host, port, data_dir))


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
) -> None:
    """The HTTP API (stateless: run as many as needed)."""
    from amnex.api.app import create_app
    from amnex.runtime import Runtime, tune_gc_for_serving

    overrides = {}
    if certfile:
        overrides["tls_certfile"] = certfile
    if keyfile:
        overrides["tls_keyfile"] = keyfile
    settings = load_settings(config, **overrides)
    if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
        raise typer.BadParameter("give both a TLS certificate and its key, or neither")
    _logging(settings)
    _require_current_schema(settings)
    app = create_app(Runtime.build(settings))
    tune_gc_for_serving()
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        proxy_headers=False,  # trusted proxies are handled by the edge middleware
        server_header=False,
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's records go to the masked root handler (logging_setup.py)
    )


@app.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what is due; change nothing.")
    ] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Purge content and metadata past their retention now, and destroy spent content keys
    (`amnex worker` does this every `purge_interval_s`)."""
    from amnex.db.engine import Database
    from amnex.privacy.retention import purge_once

    settings = _settings(config)
    _require_current_schema(settings)

    async def run() -> dict[str, Any]:
        db = Database(settings)
        try:
            report = await purge_once(db, settings, dry_run=dry_run)
        finally:
            await db.dispose()
        return {"dry_run": report.dry_run, **report.counts}

    counts = asyncio.run(run())
    if as_json:
        _print_json(counts)
        return
    verb = "due" if dry_run else "purged"
    steps = ("content", "metadata", "exports", "audit_personal", "audit_entries", "webhook_log")
    line = "; ".join(f"{step.replace('_', ' ')} {verb}: {counts.get(step, 0)}" for step in steps)
    if not dry_run:
        line += f"; content keys destroyed: {counts.get('keys_destroyed', 0)}"
    print(line)


def _require_current_schema(settings: Settings) -> None:
    from amnex.db.engine import Database
    from amnex.db.migrate import schema_is_current

    async def check() -> bool:
        db = Database(settings)
        try:
            return await schema_is_current(db)
        finally:
            await db.dispose()

    if not asyncio.run(check()):
        raise SystemExit("the database schema is not current: run `amnex db upgrade` first")


@app.command()
def worker(
    config: ConfigOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve /metrics, /healthz and /readyz on this port (overrides "
            "worker_metrics_port: one port per worker on a machine).",
        ),
    ] = None,
) -> None:
    """Dispatch messages to carriers (run as many as needed; they coordinate via the database)."""
    from amnex.worker_process import run_worker

    overrides = {} if metrics_port is None else {"worker_metrics_port": metrics_port}
    settings = load_settings(config, **overrides)
    _logging(settings)
    _run_service(run_worker(settings))


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Apply migrations that are not online even while workers run.",
        ),
    ] = False,
) -> None:
    """Apply migrations up to REVISION (default: the newest).

    Online migrations are applied while workers run; one that is not online is refused while
    a worker is alive (stop the workers first, or --force)."""
    from amnex.clock import utc_now
    from amnex.db.engine import Database
    from amnex.db.migrate import (
        UnknownRevision,
        current_revision,
        live_workers,
        migrations_after,
        upgrade_database,
        upgrade_refusal,
    )

    async def run() -> None:
        db = Database(_settings(config))
        try:
            try:
                pending = migrations_after(await current_revision(db), revision)
            except UnknownRevision as exc:
                raise SystemExit(str(exc)) from None
            refusal = upgrade_refusal(pending, await live_workers(db, now=utc_now()))
            if refusal is not None and not force:
                raise SystemExit(refusal)
            await upgrade_database(db, revision)
            for m in pending:
                print(f"applied {m.revision}  {'online ' if m.online else 'offline'}  {m.title}")
        finally:
            await db.dispose()

    asyncio.run(run())
    print(f"database upgraded to {revision}")


@db_app.command("status")
def db_status(config: ConfigOption = None) -> None:
    """The schema's revision, the migrations pending (online or not) and the workers alive."""
    from amnex.clock import utc_now
    from amnex.db.engine import AUTOVACUUM_OFF_WARNING, Database, autovacuum_off
    from amnex.db.migrate import (
        UnknownRevision,
        current_revision,
        live_workers,
        migrations_after,
    )

    async def run() -> None:
        db = Database(_settings(config))
        try:
            current = await current_revision(db)
            try:
                pending = migrations_after(current)
            except UnknownRevision as exc:
                raise SystemExit(str(exc)) from None
            workers = await live_workers(db, now=utc_now())
            no_autovacuum = await autovacuum_off(db)
        finally:
            await db.dispose()
        print(f"revision: {current or '(empty database)'}")
        if not pending:
            print("pending: none (the schema is current)")
        for m in pending:
            print(f"pending: {m.revision}  {'online ' if m.online else 'offline'}  {m.title}")
        print(f"workers alive: {len(workers)}")
        for owner in workers:
            print(f"  {owner}")
        if no_autovacuum:
            print(f"warning: {AUTOVACUUM_OFF_WARNING}")

    asyncio.run(run())


@accounts_app.command("create")
def accounts_create(
    business_name: Annotated[str, typer.Option(help="Legal or trading name.")],
    contact_name: Annotated[str, typer.Option(help="Person to contact.")],
    email: Annotated[str, typer.Option(help="Contact email.")],
    phone: Annotated[str | None, typer.Option(help="Contact phone.")] = None,
    country: Annotated[str, typer.Option(help="Home country (ISO 3166 alpha-2).")] = "US",
    config: ConfigOption = None,
) -> None:
    """Create an account and print its first API key (shown once)."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> tuple[str, str]:
        account, _, key = await service.create_account(
            session,
            business_name=business_name,
            contact_name=contact_name,
            email=email,
            phone=phone,
            country=country,
            actor=_actor(),
        )
        return account.id, key

    account_id, key = _with_db(_settings(config), work)
    print(f"account_id: {account_id}\napi_key: {key}\n(the key is shown once; store it now)")


@accounts_app.command("close")
def accounts_close(
    account_id: Annotated[str, typer.Argument(help="The account to close (acc_...).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
) -> None:
    """Close an account for good: its data key destroyed, its messages kept only as billing
    lines, its recipients' records, keys and senders deleted. Prints the proof."""
    from amnex.accounts.closure import close_account
    from amnex.clock import utc_now

    if not yes:
        typer.confirm(f"Close {account_id} for good? This cannot be undone", abort=True)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await close_account(
            session, account_id, actor=_actor(), actor_id=None, reason=reason, now=utc_now()
        )

    proof = _with_db(_settings(config), work)
    print(json.dumps(proof, indent=2, sort_keys=True))


AccountOption = Annotated[str, typer.Option("--account", help="Account id (acc_...).")]


@keys_app.command("create")
def keys_create(
    account: AccountOption,
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: send,read,manage.")] = (
        "send,read,manage"
    ),
    rate_limit_per_s: Annotated[int | None, typer.Option(help="Requests per second.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an API key and print it (shown once)."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> tuple[str, str]:
        key, plaintext = await service.create_api_key(
            session,
            account_id=account,
            name=name,
            scopes=scopes,
            rate_limit_per_s=rate_limit_per_s,
            actor=_actor(),
        )
        return key.id, plaintext

    key_id, plaintext = _with_db(_settings(config), work)
    print(f"key_id: {key_id}\napi_key: {plaintext}\n(the key is shown once; store it now)")


@keys_app.command("list")
def keys_list(account: AccountOption, config: ConfigOption = None) -> None:
    """List an account's keys (never the keys themselves)."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> list[str]:
        await service.get_account_or_raise(session, account)
        return [
            f"{k.id}  {k.prefix}…  {k.name!r}  scopes={k.scopes}  "
            f"last_used={k.last_used_at.isoformat() if k.last_used_at else '-'}  "
            f"{'REVOKED ' + k.revoked_at.isoformat() if k.revoked_at else 'active'}"
            for k in await service.list_api_keys(session, account)
        ]

    for line in _with_db(_settings(config), work):
        print(line)


@keys_app.command("revoke")
def keys_revoke(
    account: AccountOption,
    key: Annotated[str, typer.Option("--key", help="Key id (key_...).")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key; running API servers stop accepting it within seconds."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> None:
        await service.revoke_api_key(session, account_id=account, key_id=key, actor=_actor())

    _with_db(_settings(config), work)
    print(f"revoked {key}")


@senders_app.command("add")
def senders_add(
    account: AccountOption,
    channel: Annotated[str, typer.Option(help="email, sms, mms or push.")],
    address: Annotated[str, typer.Option(help="Address, @domain (email) or number.")],
    default: Annotated[bool, typer.Option("--default", help="Use when `from` is omitted.")] = False,
    config: ConfigOption = None,
) -> None:
    """Allow an account to send from a verified address or domain."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> str:
        sender = await service.add_sender(
            session,
            account_id=account,
            channel=channel,
            address=address,
            is_default=default,
            actor=_actor(),
        )
        return f"{sender.id}  {sender.channel}  {sender.address}"

    print(_with_db(_settings(config), work))


@operators_app.command("create")
def operators_create(
    name: Annotated[str, typer.Option(help="The person's name (shown in the audit log).")],
    email: Annotated[str | None, typer.Option(help="Their email.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a named operator and print their personal admin token (shown once)."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> tuple[str, str]:
        operator, token = await service.create_operator(
            session, name=name, email=email, actor=_actor()
        )
        return operator.id, token

    operator_id, token = _with_db(_settings(config), work)
    print(f"operator_id: {operator_id}\nadmin_token: {token}\n(shown once; store it now)")


@operators_app.command("list")
def operators_list(config: ConfigOption = None) -> None:
    """List operators (never their tokens)."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> list[str]:
        return [
            f"{o.id}  {o.name!r}  {o.email or '-'}  "
            f"{'REVOKED ' + o.revoked_at.isoformat() if o.revoked_at else 'active'}"
            for o in await service.list_operators(session)
        ]

    for line in _with_db(_settings(config), work):
        print(line)


@operators_app.command("revoke")
def operators_revoke(
    name: Annotated[str, typer.Option(help="The operator's name.")],
    config: ConfigOption = None,
) -> None:
    """Revoke an operator's admin token."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> None:
        await service.revoke_operator(session, name=name, actor=_actor())

    _with_db(_settings(config), work)
    print(f"revoked the token of {name!r}")


@senders_app.command("list")
def senders_list(account: AccountOption, config: ConfigOption = None) -> None:
    """List the addresses and domains an account may send from."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> list[str]:
        await service.get_account_or_raise(session, account)
        return [
            f"{s.id}  {s.channel}  {s.address}{'  (default)' if s.is_default else ''}"
            for s in await service.list_senders(session, account)
        ]

    for line in _with_db(_settings(config), work):
        print(line)


@senders_app.command("remove")
def senders_remove(
    account: AccountOption,
    sender: Annotated[str, typer.Option("--sender", help="Sender id (snd_...).")],
    config: ConfigOption = None,
) -> None:
    """Stop an account from sending from an address or domain."""
    from amnex.accounts import service

    async def work(session: AsyncSession) -> None:
        await service.delete_sender(session, account_id=account, sender_id=sender, actor=_actor())

    _with_db(_settings(config), work)
    print(f"removed {sender}")


# Connectors and routes. Changes here reach running API and worker processes within
# `route_cache_ttl_s`: they reload the table themselves.

PasswordOption = Annotated[
    str | None,
    typer.Option(help="The SMPP password (visible to other users in the process list)."),
]
PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the SMPP password from standard input.")
]
BindTypeOption = Annotated[
    str | None, typer.Option(help="transceiver (default), transmitter or receiver.")
]
BindsOption = Annotated[int | None, typer.Option(help="Connections to open (1-32).")]
WindowOption = Annotated[int | None, typer.Option(help="Unanswered submit_sm per bind.")]
ThroughputOption = Annotated[
    float | None, typer.Option(help="Messages per second across the binds; 0 = no cap.")
]
SplitOption = Annotated[str | None, typer.Option(help="Long messages: udh (default) or sar.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any other SMPP setting, e.g. response_timeout_s=5 (repeatable; null unsets).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Every field, as JSON.")]


def _secret_box(settings: Settings) -> SecretBox:
    from amnex.privacy.crypto import CryptoError, SecretBox

    try:
        return SecretBox.from_settings(settings)
    except CryptoError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _password(password: str | None, password_stdin: bool) -> str | None:
    if password is not None and password_stdin:
        raise typer.BadParameter("give --password or --password-stdin, not both")
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return password


def _smpp_settings(pairs: list[str] | None, **options: Any) -> dict[str, Any]:
    """The settings given on the command line: `--set` pairs, then the named options.

    Values stay text; the connector's settings model converts and checks them.
    """
    settings: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        settings[key.strip()] = None if value == "null" else value
    settings.update({k: v for k, v in options.items() if v is not None})
    return settings


def _connector_line(connector: Connector) -> str:
    config = connector.config
    throughput = config.get("throughput_per_s") or "unlimited"
    return (
        f"{connector.id}  {connector.name!r}  {config['host']}:{config['port']}  "
        f"system_id={config['system_id']}  {config['bind_type']} x{config['binds']}  "
        f"window={config['window']}  per_s={throughput}  "
        f"tls={'on' if config.get('tls') else 'off'}  "
        f"password={'set' if connector.secret is not None else 'none'}  "
        f"{'enabled' if connector.enabled else 'DISABLED'}"
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=lambda v: v.isoformat()))


@connectors_app.command("add")
def connectors_add(
    name: Annotated[str, typer.Option(help="A unique name, e.g. the carrier's.")],
    host: Annotated[str, typer.Option(help="The SMSC's host name or address.")],
    port: Annotated[int, typer.Option(help="The SMSC's SMPP port.")],
    system_id: Annotated[str, typer.Option(help="The system_id Amnex binds as.")],
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    bind_type: BindTypeOption = None,
    binds: BindsOption = None,
    window: WindowOption = None,
    throughput_per_s: ThroughputOption = None,
    split: SplitOption = None,
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS.")] = False,
    set_: SetOption = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Store it, but route nothing to it yet.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Add an SMPP connector; its password is sealed with the master key."""
    from amnex.carriers import service

    settings = _settings(config)
    box = _secret_box(settings)
    secret = _password(password, password_stdin) or ""
    smpp = _smpp_settings(
        set_,
        host=host,
        port=port,
        system_id=system_id,
        bind_type=bind_type,
        binds=binds,
        window=window,
        throughput_per_s=throughput_per_s,
        split=split,
        tls=tls or None,
    )

    async def work(session: AsyncSession) -> str:
        connector = await service.create_connector(
            session,
            box,
            name=name,
            config=smpp,
            password=secret,
            enabled=not disabled,
            actor=_actor(),
        )
        return f"connector_id: {connector.id}\n{_connector_line(connector)}"

    print(_with_db(settings, work))


@connectors_app.command("list")
def connectors_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List connectors (never their passwords: only whether one is set)."""
    from amnex.carriers import service

    async def work(session: AsyncSession) -> list[Connector]:
        return await service.list_connectors(session)

    connectors = _with_db(_settings(config), work)
    if as_json:
        _print_json([service.connector_out(c) for c in connectors])
        return
    for connector in connectors:
        print(_connector_line(connector))


ConnectorArgument = Annotated[str, typer.Argument(help="Connector id (con_...).")]


@connectors_app.command("update")
def connectors_update(
    connector_id: ConnectorArgument,
    host: Annotated[str | None, typer.Option(help="The SMSC's host name or address.")] = None,
    port: Annotated[int | None, typer.Option(help="The SMSC's SMPP port.")] = None,
    system_id: Annotated[str | None, typer.Option(help="The system_id Amnex binds as.")] = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    bind_type: BindTypeOption = None,
    binds: BindsOption = None,
    window: WindowOption = None,
    throughput_per_s: ThroughputOption = None,
    split: SplitOption = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="Connect with TLS.")] = None,
    set_: SetOption = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Route messages to it, or stop.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Change some settings, the password (an empty one removes it) or whether it is used."""
    from amnex.carriers import service

    settings = _settings(config)
    box = _secret_box(settings)
    secret = _password(password, password_stdin)
    smpp = _smpp_settings(
        set_,
        host=host,
        port=port,
        system_id=system_id,
        bind_type=bind_type,
        binds=binds,
        window=window,
        throughput_per_s=throughput_per_s,
        split=split,
        tls=tls,
    )

    async def work(session: AsyncSession) -> str:
        connector = await service.update_connector(
            session,
            box,
            connector_id,
            config=smpp or None,
            password=secret,
            enabled=enabled,
            actor=_actor(),
        )
        return _connector_line(connector)

    print(_with_db(settings, work))


@connectors_app.command("remove")
def connectors_remove(connector_id: ConnectorArgument, config: ConfigOption = None) -> None:
    """Remove a connector (refused while a route sends to it)."""
    from amnex.carriers import service

    async def work(session: AsyncSession) -> None:
        await service.delete_connector(session, connector_id, actor=_actor())

    _with_db(_settings(config), work)
    print(f"removed {connector_id}")


@routes_app.command("add")
def routes_add(
    connector: Annotated[
        list[str],
        typer.Option(
            "--connector", help="Connector id; repeat for failover, tried in the order given."
        ),
    ],
    channel: Annotated[str, typer.Option(help="The channel routed (today: sms).")] = "sms",
    account: Annotated[
        str | None, typer.Option("--account", help="Only this account's messages (acc_...).")
    ] = None,
    country: Annotated[
        str | None, typer.Option(help="Only numbers of this country (ISO 3166 alpha-2).")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Only numbers starting with these digits.")] = "",
    priority: Annotated[int, typer.Option(help="Breaks ties between routes; higher wins.")] = 0,
    allow_landline: Annotated[
        bool,
        typer.Option(
            "--allow-landline", help="The carrier delivers SMS to text-enabled landlines."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Send matching messages to these connectors (the most specific route wins)."""
    from amnex.carriers import service

    async def work(session: AsyncSession) -> str:
        route = await service.create_route(
            session,
            channel=channel,
            connector_ids=connector,
            account_id=account,
            country=country,
            prefix=prefix,
            priority=priority,
            allow_landline=allow_landline,
            actor=_actor(),
        )
        return f"route_id: {route.id}"

    print(_with_db(_settings(config), work))


@routes_app.command("list")
def routes_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List routes, each with its connectors in failover order."""
    from amnex.carriers import service

    async def work(session: AsyncSession) -> tuple[list[dict[str, Any]], dict[str, str]]:
        names = {c.id: c.name for c in await service.list_connectors(session)}
        return [service.route_out(r) for r in await service.list_routes(session)], names

    routes, names = _with_db(_settings(config), work)
    if as_json:
        _print_json(routes)
        return
    for route in routes:
        connectors = ", ".join(f"{cid} ({names.get(cid, '?')})" for cid in route["connector_ids"])
        print(
            f"{route['id']}  {route['channel']}  account={route['account_id'] or '*'}  "
            f"country={route['country'] or '*'}  prefix={route['prefix'] or '*'}  "
            f"priority={route['priority']}  -> {connectors}"
        )


@routes_app.command("remove")
def routes_remove(
    route_id: Annotated[str, typer.Argument(help="Route id (rte_...).")],
    config: ConfigOption = None,
) -> None:
    """Remove a route."""
    from amnex.carriers import service

    async def work(session: AsyncSession) -> None:
        await service.delete_route(session, route_id, actor=_actor())

    _with_db(_settings(config), work)
    print(f"removed {route_id}")


@crypto_app.command("generate-key")
def crypto_generate_key() -> None:
    """Print a new master key (set it as AMNEX_MASTER_KEY, or in AMNEX_MASTER_KEY_FILE)."""
    from amnex.privacy.crypto import generate_key

    print(generate_key())


@crypto_app.command("rotate-master")
def crypto_rotate_master(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be re-wrapped; change nothing.")
    ] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Re-wrap every key and secret sealed under a previous master key with the current one
    (AMNEX_MASTER_KEY), opening them with AMNEX_PREVIOUS_MASTER_KEYS; see docs/privacy.md."""
    from amnex.db.engine import Database
    from amnex.privacy.rotation import rotate_master

    settings = _settings(config)
    box = _secret_box(settings)
    if not box.available:
        raise SystemExit("error: no master key: set AMNEX_MASTER_KEY to the new key first")
    _require_current_schema(settings)

    async def run() -> RotationReport:
        db = Database(settings)
        try:
            return await rotate_master(db, box, actor=_actor(), dry_run=dry_run)
        finally:
            await db.dispose()

    report = asyncio.run(run())
    if as_json:
        _print_json({"dry_run": report.dry_run, "ok": report.ok, "tables": report.counts()})
    else:
        done = "due" if dry_run else "rewrapped"
        print(f"{'table':<14}{done:>10}{'current':>10}{'changed':>10}{'unreadable':>12}")
        for table in report.tables:
            print(
                f"{table.table:<14}{table.rewrapped:>10}{table.current:>10}"
                f"{table.changed:>10}{len(table.unreadable):>12}"
            )
    if not report.ok:
        unreadable = "; ".join(
            f"{t.table}: {', '.join(t.unreadable)}" for t in report.tables if t.unreadable
        )
        raise SystemExit(
            f"error: these values open with no configured master key and were left as they "
            f"are ({unreadable}); add the key they were sealed with to "
            f"AMNEX_PREVIOUS_MASTER_KEYS (or check AMNEX_MASTER_KEY) and run again"
        )


@privacy_app.command("report")
def privacy_report(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """State, from the live data, what the privacy promises look like now: encryption, content
    past retention, metadata age per account, purges, records of processing, findings."""
    from amnex.privacy.records import RecordsFileError, load_records_file
    from amnex.privacy.report import build_report, render_text

    settings = _settings(config)
    try:
        operator_file = load_records_file(settings)
    except RecordsFileError as exc:
        raise SystemExit(f"error: {exc}") from exc
    _require_current_schema(settings)
    report = _with_db(settings, lambda session: build_report(session, settings, operator_file))
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    print(render_text(report))


@simulate_app.command("smsc")
def simulate_smsc(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one, printed).")] = 2775,
    system_id: Annotated[str, typer.Option(help="The system_id it accepts.")] = "amnex",
    # The documented simulator credential (as in `amnex dev`), not a secret.
    password: Annotated[str, typer.Option(help="The password it accepts.")] = "secret",  # noqa: S107
    receipt_delay_ms: Annotated[
        int, typer.Option(min=0, help="Delay before a delivery receipt.")
    ] = 50,
    response_delay_ms: Annotated[
        int, typer.Option(min=0, help="Delay before each submit_sm_resp (a slow SMSC).")
    ] = 0,
) -> None:
    """Run the SMSC simulator until Ctrl-C or SIGTERM (test a connector against it).

    Destinations ending 90 to 95 fail in set ways (docs/deployment.md); others are delivered.
    """
    from amnex.simulators.smsc import SmscSimulator

    _logging(level="WARNING")
    smsc = SmscSimulator(
        host,
        port,
        system_id=system_id,
        password=password,
        receipt_delay_s=receipt_delay_ms / 1000,
        response_delay_s=response_delay_ms / 1000,
    )
    _run_service(_run_until_stopped(smsc))


async def _run_until_stopped(smsc: SmscSimulator) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await smsc.start()
        print(
            f"host: {smsc.host}\nport: {smsc.port}\nsystem_id: {smsc.system_id}\n"
            f"password: {smsc.password}\n(SMSC simulator running; Ctrl-C to stop)",
            flush=True,
        )
        await stop.wait()
    finally:
        await smsc.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main() -> None:
    try:
        app()
    except AmnexError as exc:
        raise SystemExit(f"error ({exc.code}): {exc.detail}") from exc
