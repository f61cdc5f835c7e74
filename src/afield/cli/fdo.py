"""``afield fdo``: the FDO key infrastructure and servers.

``init`` writes the manufacturer, device CA and owner keys (:mod:`afield.fdo.pki`); ``serve
manufacturer|rendezvous|owner`` runs DI, TO0/TO1 and TO2 (:mod:`afield.fdo.server`), imported
only then, since a device's ``afield`` has no server packages; ``voucher ...`` is
:mod:`afield.cli.fdo_voucher`.

What it leaves to others: the protocols and servers themselves, mounting them inside the fleet
manager.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from afield.cli._output import console, print_json
from afield.cli.fdo_voucher import JsonOption, bad_input, certificate_key, voucher_app
from afield.errors import FdoError
from afield.fdo.modules import DownloadFile, Handoff, ModuleError
from afield.fdo.pki import (
    ROLES,
    Pki,
    fingerprint,
    init_pki,
    load_certificate,
    load_pki,
)
from afield.fdo.rendezvous import (
    RendezvousDirective,
    RendezvousInfo,
    RvProtocol,
    RvTo2Addr,
    RvTo2AddrEntry,
    TransportProtocol,
)
from afield.fdo.types import PublicKey

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="FIDO Device Onboard: keys, servers and ownership vouchers.", no_args_is_help=True
)
app.add_typer(voucher_app, name="voucher")


@app.command("init")
def init(
    directory: Path = typer.Option(..., "--dir", help="The PKI directory (created if missing)."),
    curve: str = typer.Option("P-384", "--curve", help="P-384 (default) or P-256."),
    as_json: bool = JsonOption,
) -> None:
    """Generate the manufacturer key, the device CA and the owner key (never overwrites)."""
    pki = init_pki(directory, curve=curve)
    roles = {
        role: {
            "key": str(Pki.key_path(directory, role)),
            "cert": str(Pki.cert_path(directory, role)),
            "fingerprint": fingerprint(getattr(pki, role).cert),
        }
        for role in ROLES
    }
    if as_json:
        print_json({"dir": str(directory), "curve": curve, **roles})
        return
    console.print(f"generated an FDO PKI ({curve}) in {directory}", markup=False)
    for role, files in roles.items():
        console.print(
            f"{role:<13} {files['fingerprint'][:16]}  {files['key']}, {files['cert']}",
            soft_wrap=True,
            markup=False,
        )
    console.print("private keys are mode 0600: keep the device CA and manufacturer keys offline")


serve_app = typer.Typer(help="Run the FDO servers.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


_PROTOCOLS = {"": RvProtocol.HTTP, "http": RvProtocol.HTTP, "https": RvProtocol.HTTPS}


def _address(value: str, option: str) -> tuple[str | None, str | None, int, str]:
    """``HOST:PORT[/http|/https]`` as (ip, dns, port, scheme); a DNS name or an IP address."""
    address, _, scheme = value.partition("/")
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise typer.BadParameter(
            f"{value!r}: expected HOST:PORT, optionally /http or /https, e.g. "
            "rv.example.com:8040/https",
            param_hint=option,
        )
    if scheme not in _PROTOCOLS:
        raise typer.BadParameter(
            f"{value!r}: the protocol must be http or https", param_hint=option
        )
    bare = host.strip("[]")
    try:
        ip_address(bare)
    except ValueError:
        return None, host, int(port_text), scheme or "http"
    return bare, None, int(port_text), scheme or "http"


def parse_rendezvous(values: list[str]) -> RendezvousInfo:
    """RendezvousInfo from ``HOST:PORT[/http|/https]`` values (a DNS name or an IP address)."""
    directives: list[RendezvousDirective] = []
    for value in values:
        ip, dns, port, scheme = _address(value, "--rendezvous")
        directives.append(
            RendezvousDirective.build(
                dns=dns, ip=ip, dev_port=port, owner_port=port, protocol=_PROTOCOLS[scheme]
            )
        )
    return RendezvousInfo(tuple(directives))


def parse_to2_addresses(values: list[str]) -> RvTo2Addr:
    """RVTO2Addr (where devices reach the owner) from ``HOST:PORT[/http|/https]`` values."""
    entries = []
    for value in values:
        ip, dns, port, scheme = _address(value, "--address")
        protocol = TransportProtocol.HTTPS if scheme == "https" else TransportProtocol.HTTP
        packed = ip_address(ip).packed if ip is not None else None
        entries.append(RvTo2AddrEntry(packed, dns, port, protocol))
    return RvTo2Addr(tuple(entries))


@serve_app.command("manufacturer")
def serve_manufacturer(
    pki: Path = typer.Option(..., "--pki", help="The PKI directory (afield fdo init)."),
    db: str = typer.Option(
        "sqlite:///fdo-manufacturer.db", "--db", help="Where vouchers are kept (SQLAlchemy URL)."
    ),
    rendezvous: list[str] = typer.Option(
        [],
        "--rendezvous",
        help="Rendezvous server written into every voucher, HOST:PORT[/http|/https] (repeatable).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8039, "--port", help="Port to listen on (0: any free port)."),
) -> None:
    """Serve Device Initialize (DI): devices get their credential, the voucher is stored."""
    # Server-only code (Starlette, SQLAlchemy, uvicorn): imported when the server runs, so the
    # `afield` command starts on a device, which has none of them.
    from afield._serving import serve
    from afield.fdo.server import ManufacturerSettings, SqlVoucherStore, create_manufacturer_app

    settings = ManufacturerSettings(rv_info=parse_rendezvous(rendezvous))
    app = create_manufacturer_app(load_pki(pki), SqlVoucherStore(db), settings)
    serve(
        app,
        host=host,
        port=port,
        on_ready=lambda url: console.print(f"manufacturer (DI) serving on {url}", soft_wrap=True),
    )


@serve_app.command("rendezvous")
def serve_rendezvous(
    manufacturers: list[Path] = typer.Option(
        ...,
        "--trust-manufacturer",
        help="A manufacturer certificate (PEM) whose vouchers are accepted (repeatable).",
    ),
    db: str = typer.Option(
        "sqlite:///fdo-rendezvous.db", "--db", help="Where registrations are kept (SQLAlchemy URL)."
    ),
    max_wait: int = typer.Option(
        7 * 24 * 3600, "--max-wait", min=1, help="The longest registration granted, in seconds."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8040, "--port", help="Port to listen on (0: any free port)."),
) -> None:
    """Serve TO0 (owners register devices) and TO1 (devices find their owner).

    After TO2 an owner registers the device's replacement voucher, whose header carries the
    owner's key where the manufacturer's was: trust the owners' certificates here too, or a
    device that onboards again finds no owner.
    """
    from afield._serving import serve
    from afield.fdo.server import RendezvousSettings, SqlRendezvousStore, create_rendezvous_app

    trusted = tuple(PublicKey.from_key(certificate_key(path)) for path in manufacturers)
    settings = RendezvousSettings(trusted, max_wait_seconds=max_wait)
    app = create_rendezvous_app(SqlRendezvousStore(db), settings)
    serve(
        app,
        host=host,
        port=port,
        on_ready=lambda url: console.print(
            f"rendezvous (TO0, TO1) serving on {url}", soft_wrap=True
        ),
    )


TokenOption = typer.Option(
    None,
    "--import-token",
    envvar="AFIELD_OWNER_TOKEN",
    help="Token that `afield fdo voucher import --owner` must present (env AFIELD_OWNER_TOKEN).",
)


def _files(values: list[str]) -> tuple[DownloadFile, ...]:
    files = []
    for value in values:
        source, _, target = value.partition("=")
        if not source or not target:
            raise typer.BadParameter(
                f"{value!r}: expected SOURCE=DEVICE_PATH, e.g. app.conf=/var/lib/app/app.conf",
                param_hint="--file",
            )
        files.append(DownloadFile(target, _read(Path(source))))
    return tuple(files)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror}") from None


def _handoff(
    fleet_url: str | None, tuf_root: Path | None, ssh_keys: list[Path], files: list[str]
) -> Handoff:
    keys = [line.strip() for path in ssh_keys for line in _read(path).decode().splitlines()]
    handoff = Handoff(
        fleet_url=fleet_url,
        tuf_root=_read(tuf_root) if tuf_root is not None else None,
        ssh_keys=tuple(k for k in keys if k and not k.startswith("#")),
        files=_files(files),
    )
    try:
        return handoff.check()
    except ModuleError as e:
        error = FdoError(f"what the owner hands devices is not acceptable: {e}")
        error.user_error = True
        raise error from None


@serve_app.command("owner")
def serve_owner(
    pki_dir: Path = typer.Option(..., "--pki", help="The PKI directory with the owner key."),
    db: str = typer.Option(
        "sqlite:///fdo-owner.db", "--db", help="Where owned vouchers are kept (SQLAlchemy URL)."
    ),
    device_cas: list[Path] = typer.Option(
        [], "--device-ca", help="Trusted device CA certificate (repeatable; default: the PKI's)."
    ),
    addresses: list[str] = typer.Option(
        [],
        "--address",
        help="Where devices reach this server, HOST:PORT[/http|/https], registered at TO0 "
        "(repeatable; default: the address it listens on).",
    ),
    wait_seconds: int = typer.Option(
        7 * 24 * 3600, "--wait-seconds", min=1, help="Registration lifetime asked for at TO0."
    ),
    fleet_url: str | None = typer.Option(None, "--fleet-url", help="The fleet manager's URL."),
    tuf_root: Path | None = typer.Option(
        None, "--tuf-root", help="The update repository's TUF root.json, handed to devices."
    ),
    ssh_keys: list[Path] = typer.Option(
        [], "--ssh-keys", help="An authorized_keys file whose keys devices get (repeatable)."
    ),
    files: list[str] = typer.Option(
        [], "--file", help="SOURCE=DEVICE_PATH: a file for every device (repeatable)."
    ),
    reuse_credential: bool = typer.Option(
        False, "--reuse-credential", help="Keep devices' GUIDs (FDO credential reuse)."
    ),
    import_token: str | None = TokenOption,
    to0_interval: float = typer.Option(
        60.0, "--to0-interval", min=1, help="Seconds between re-registration passes."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8043, "--port", help="Port to listen on (0: any free port)."),
) -> None:
    """Serve TO2: devices prove themselves, get a new credential and what the owner hands over."""
    from afield._serving import serve
    from afield.fdo.server import OwnerSettings, SqlOwnerStore, create_owner_app
    from afield.fdo.server.handoff import HandoffProvider
    from afield.fdo.server.owner_api import import_routes
    from afield.fdo.server.registrar import Registrar

    pki = load_pki(pki_dir)
    handoff = _handoff(fleet_url, tuf_root, ssh_keys, files)
    cas = [load_certificate(path) for path in device_cas] or [pki.device_ca.cert]
    store = SqlOwnerStore(db, owner_key=pki.owner.public_key())
    given = parse_to2_addresses(addresses) if addresses else None
    registrar = Registrar(
        store, pki.owner.key, given, wait_seconds=wait_seconds, interval=to0_interval
    )
    settings = OwnerSettings(
        trusted_device_cas=cas,
        reuse_credential=reuse_credential,
        service_info=HandoffProvider(handoff),
    )
    routes = import_routes(store, registrar, import_token) if import_token else []
    app = create_owner_app(pki, store, settings, routes)

    def ready(url: str) -> None:
        if given is None:
            registrar.to2_addrs = parse_to2_addresses([url.removeprefix("http://")])
        registrar.start()
        console.print(f"owner (TO2) serving on {url}", soft_wrap=True)

    try:
        serve(app, host=host, port=port, on_ready=ready)
    finally:
        registrar.stop()
        store.close()
