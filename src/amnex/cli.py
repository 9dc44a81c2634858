"""Entry points: the `amnex` command (dev, serve, worker, db, accounts, keys, operators)."""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.config import Settings, load_settings
from amnex.errors import AmnexError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Amnex A2P messaging platform.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
accounts_app = typer.Typer(no_args_is_help=True, help="Client accounts.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of an account.")
senders_app = typer.Typer(no_args_is_help=True, help="Verified senders of an account.")
operators_app = typer.Typer(no_args_is_help=True, help="Named operators with admin tokens.")
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(senders_app, name="senders")
app.add_typer(operators_app, name="operators")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (else AMNEX_CONFIG_FILE).", exists=True),
]
T = TypeVar("T")


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    asyncio.run(run_dev(host, port, data_dir))


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
    _logging()
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
    )


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
def worker(config: ConfigOption = None) -> None:
    """Dispatch messages to carriers (run as many as needed; they coordinate via the database)."""
    from amnex.worker_process import run_worker

    _logging()
    asyncio.run(run_worker(_settings(config)))


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from amnex.db.engine import Database
    from amnex.db.migrate import upgrade_database

    async def run() -> None:
        db = Database(_settings(config))
        try:
            await upgrade_database(db, revision)
        finally:
            await db.dispose()

    asyncio.run(run())
    print(f"database upgraded to {revision}")


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


def main() -> None:
    try:
        app()
    except AmnexError as exc:
        raise SystemExit(f"error ({exc.code}): {exc.detail}") from exc
