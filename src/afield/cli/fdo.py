"""``afield fdo``: the FDO key infrastructure and ownership vouchers.

``init`` writes the manufacturer, device CA and owner keys (:mod:`afield.fdo.pki`); ``voucher
show|verify|extend`` read a voucher in PEM or raw CBOR form. A file that cannot be read or is not
what it should be exits 2 naming it; a voucher that does not verify exits 1 naming the entry.
Key fingerprints are the SHA-256 of the key's DER SubjectPublicKeyInfo, so the same key has the
same fingerprint whatever encoding the voucher uses for it.

``serve manufacturer`` runs the DI server (:mod:`afield.fdo.server`), imported only then, since a
device's ``afield`` has no server packages.

What it leaves to others: the rendezvous and owner servers, importing vouchers.
"""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.cli._output import console, print_json
from afield.errors import FdoError
from afield.fdo import FdoMessageError, VerifyError, Voucher, VoucherError
from afield.fdo.cbor import decode
from afield.fdo.modules import DownloadFile, Handoff, ModuleError
from afield.fdo.pki import (
    ROLES,
    Pki,
    fingerprint,
    init_pki,
    load_certificate,
    load_pki,
    load_private_key,
    verify_device_chain,
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
from afield.fdo.voucher import OVEntryPayload

if TYPE_CHECKING:
    from afield.fdo.server.store import SqlVoucherStore

app = typer.Typer(help="FIDO Device Onboard: keys and ownership vouchers.", no_args_is_help=True)
voucher_app = typer.Typer(help="Show, verify and extend ownership vouchers.", no_args_is_help=True)
app.add_typer(voucher_app, name="voucher")

JsonOption = typer.Option(False, "--json", help="Print JSON.")
VoucherArgument = typer.Argument(..., metavar="FILE", help="Ownership voucher (PEM or CBOR).")


def _bad_input(path: Path, message: str) -> FdoError:
    error = FdoError(f"{path}: {message}")
    error.user_error = True
    return error


def _load_voucher(path: Path) -> Voucher:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _bad_input(path, f"cannot read: {e.strerror}") from None
    try:
        return Voucher.load(data)
    except FdoMessageError as e:
        raise _bad_input(path, f"not an ownership voucher: {e}") from None


def _key(key: PublicKey) -> dict[str, Any]:
    return {
        "type": key.type.name,
        "encoding": key.encoding.name,
        "fingerprint": fingerprint(key),
    }


def _describe(path: Path, voucher: Voucher) -> dict[str, Any]:
    header = voucher.header
    entries = []
    for index, entry in enumerate(voucher.entries):
        try:
            payload = OVEntryPayload.from_cbor(decode(entry.payload), f"entry {index}")
        except FdoMessageError as e:
            raise _bad_input(path, f"entry {index} does not decode: {e}") from None
        entries.append(
            {
                "index": index,
                "hash": payload.prev_hash.alg.name,
                "owner_key": _key(payload.public_key),
                "extra": payload.extra is not None,
            }
        )
    return {
        "file": str(path),
        "guid": str(header.guid),
        "device_info": header.device_info,
        "protocol_version": voucher.protocol_version,
        "manufacturer_key": _key(header.manufacturer_key),
        "header_hmac": voucher.header_hmac.alg.name,
        "device_cert_chain": None if voucher.cert_chain is None else len(voucher.cert_chain),
        "rendezvous_directives": len(header.rv_info.directives),
        "entries": entries,
        "owner_key": entries[-1]["owner_key"] if entries else _key(header.manufacturer_key),
    }


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


@voucher_app.command("show")
def show(path: Path = VoucherArgument, as_json: bool = JsonOption) -> None:
    """Print a voucher's GUID, device info, keys and entries (without verifying it)."""
    info = _describe(path, _load_voucher(path))
    if as_json:
        print_json(info)
        return
    manufacturer = info["manufacturer_key"]
    lines = [
        f"guid              {info['guid']}",
        f"device info       {info['device_info']}",
        f"protocol version  {info['protocol_version']}",
        f"manufacturer key  {manufacturer['type']} ({manufacturer['encoding']}) "
        f"{manufacturer['fingerprint']}",
        f"device certs      {info['device_cert_chain'] or 'none'}",
        f"entries           {len(info['entries'])}",
    ]
    for entry in info["entries"]:
        key = entry["owner_key"]
        lines.append(f"  {entry['index']}: {key['type']} ({key['encoding']}) {key['fingerprint']}")
    console.print("\n".join(lines), soft_wrap=True, markup=False)


@voucher_app.command("verify")
def verify(
    path: Path = VoucherArgument,
    owner_cert: Path | None = typer.Option(
        None, "--owner-cert", help="Also require the final owner to be this certificate's key."
    ),
    device_ca: list[Path] | None = typer.Option(
        None, "--device-ca", help="Also check the device certificates against this CA (repeat)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Verify the whole entry chain; exit 1 naming the first entry that fails."""
    voucher = _load_voucher(path)
    owner = _certificate_key(owner_cert) if owner_cert is not None else None
    cas = [load_certificate(ca) for ca in device_ca or []]
    try:
        final = voucher.verify(owner=owner)
        if cas:
            verify_device_chain(voucher.cert_chain or [], cas)
    except VerifyError as e:
        raise VerifyError(f"{path}: {e}", code=e.code) from None
    info: dict[str, Any] = {
        "file": str(path),
        "valid": True,
        "guid": str(voucher.header.guid),
        "entries": len(voucher.entries),
        "owner_key": _key(final),
        "device_chain_checked": bool(cas),
    }
    if as_json:
        print_json(info)
        return
    console.print(
        f"{path}: valid ownership voucher for {info['guid']}, {info['entries']} entries, "
        f"owner key {info['owner_key']['fingerprint']}",
        soft_wrap=True,
        markup=False,
    )


@voucher_app.command("extend")
def extend(
    path: Path = VoucherArgument,
    key_path: Path = typer.Option(..., "--key", help="The current owner's private key (PEM)."),
    to: Path = typer.Option(..., "--to", help="The new owner's certificate (PEM)."),
    out: Path = typer.Option(..., "-o", "--output", help="Where to write the extended voucher."),
    as_json: bool = JsonOption,
) -> None:
    """Transfer a voucher to a new owner: add an entry signed with the current owner's key."""
    voucher = _load_voucher(path)
    try:
        voucher.verify()
    except VoucherError as e:
        raise VerifyError(
            f"{path}: not extending a voucher that does not verify: {e}", code=e.code
        ) from None
    key = load_private_key(key_path)
    new_owner = _certificate_key(to)
    if not voucher.owner_key().same_key(key.public_key()):
        current = fingerprint(voucher.owner_key())
        raise _bad_input(key_path, f"is not the voucher's current owner key ({current})")
    try:
        extended = voucher.extend(key, PublicKey.from_key(new_owner))
    except VoucherError as e:
        raise _bad_input(to, str(e)) from None
    try:
        out.write_text(extended.to_pem())
    except OSError as e:
        raise _bad_input(out, f"cannot write: {e.strerror}") from None
    result: dict[str, Any] = {
        "file": str(out),
        "entries": len(extended.entries),
        "owner_key": _key(extended.owner_key()),
    }
    if as_json:
        print_json(result)
        return
    console.print(
        f"wrote {out}: entry {len(extended.entries) - 1} transfers to owner key "
        f"{result['owner_key']['fingerprint']}",
        soft_wrap=True,
        markup=False,
    )


@voucher_app.command("export")
def export(
    db: str = typer.Option(..., "--db", help="The manufacturer's voucher store (SQLAlchemy URL)."),
    guids: list[str] = typer.Option([], "--guid", help="A device GUID to export (repeatable)."),
    serials: list[str] = typer.Option([], "--serial", help="A serial number (repeatable)."),
    everything: bool = typer.Option(False, "--all", help="Export every stored voucher."),
    key_path: Path | None = typer.Option(
        None, "--key", help="The manufacturer's private key, to extend to --to (PEM)."
    ),
    to: Path | None = typer.Option(
        None, "--to", help="Extend each voucher to this owner's certificate (PEM) on the way out."
    ),
    out_dir: Path = typer.Option(..., "--dir", help="Where to write GUID.pem files."),
    as_json: bool = JsonOption,
) -> None:
    """Export vouchers from the manufacturer's store, optionally extended to their owner."""
    from afield.fdo.server.store import SqlVoucherStore  # server-only: SQLAlchemy

    if (key_path is None) != (to is None):
        raise typer.BadParameter("give --key and --to together", param_hint="--to")
    if not (guids or serials or everything):
        raise typer.BadParameter(
            "name vouchers with --guid, --serial or --all", param_hint="--guid"
        )
    store = SqlVoucherStore(db)
    try:
        selected = _select_vouchers(store, guids, serials, everything)
    finally:
        store.close()
    key = load_private_key(key_path) if key_path is not None else None
    owner = _certificate_key(to) if to is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for voucher in selected:
        if key is not None and owner is not None:
            voucher = voucher.extend(key, PublicKey.from_key(owner))
        path = out_dir / f"{voucher.header.guid}.pem"
        try:
            path.write_text(voucher.to_pem())
        except OSError as e:
            raise _bad_input(path, f"cannot write: {e.strerror}") from None
        written.append({"guid": str(voucher.header.guid), "file": str(path)})
    if as_json:
        print_json({"exported": written})
        return
    extended = f", extended to {fingerprint(owner)[:16]}" if owner is not None else ""
    console.print(f"exported {len(written)} vouchers to {out_dir}{extended}", markup=False)


def _select_vouchers(
    store: SqlVoucherStore, guids: list[str], serials: list[str], everything: bool
) -> list[Voucher]:
    chosen = []
    for item in store.vouchers():
        if everything or str(item.guid) in guids or item.serial_number in serials:
            chosen.append(item)
    found = {str(item.guid) for item in chosen} | {item.serial_number for item in chosen}
    missing = [name for name in [*guids, *serials] if name not in found]
    if missing:
        error = FdoError(f"no voucher stored for {', '.join(missing)}")
        error.user_error = True
        raise error
    return [item.voucher for item in chosen]


def _certificate_key(path: Path) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    public = load_certificate(path).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise _bad_input(path, "the certificate's key is neither EC nor RSA")
    return public


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

    trusted = tuple(PublicKey.from_key(_certificate_key(path)) for path in manufacturers)
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
        raise _bad_input(path, f"cannot read: {e.strerror}") from None


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


@voucher_app.command("import")
def import_vouchers(
    paths: list[Path] = typer.Argument(..., metavar="FILE...", help="Vouchers (PEM or CBOR)."),
    owner: str | None = typer.Option(
        None, "--owner", help="A running owner server's URL: import there, and TO0 at once."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="AFIELD_OWNER_TOKEN", help="The owner server's import token."
    ),
    db: str | None = typer.Option(
        None, "--db", help="Or the owner's store directly (its server registers within a pass)."
    ),
    pki_dir: Path | None = typer.Option(None, "--pki", help="The owner's PKI (with --db)."),
    as_json: bool = JsonOption,
) -> None:
    """Give vouchers to their owner: each must verify and end at the owner's key."""
    if (owner is None) == (db is None):
        raise typer.BadParameter("give either --owner URL or --db URL", param_hint="--owner")
    vouchers = [(path, _load_voucher(path)) for path in paths]
    if owner is not None:
        if not token:
            raise typer.BadParameter("--owner needs --token", param_hint="--token")
        imported = [_import_remote(owner, token, path, v) for path, v in vouchers]
    else:
        if pki_dir is None:
            raise typer.BadParameter("--db needs --pki (the owner's key)", param_hint="--pki")
        imported = _import_local(str(db), load_pki(pki_dir), vouchers)
    if as_json:
        print_json({"imported": imported})
        return
    for item in imported:
        state = "registered" if item["registered"] else "stored, registration pending"
        console.print(f"{item['guid']}: {state}", markup=False)


def _import_remote(owner: str, token: str, path: Path, voucher: Voucher) -> dict[str, Any]:
    import urllib3

    url = f"{owner.rstrip('/')}/api/v1/vouchers"
    try:
        response = urllib3.request(
            "POST",
            url,
            body=voucher.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/cbor"},
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=False,
        )
    except urllib3.exceptions.HTTPError as e:
        raise _bad_input(path, f"cannot reach the owner at {url}: {e}") from None
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = {}
    if response.status != 201:
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise _bad_input(path, f"the owner refused it (HTTP {response.status}): {reason}")
    return {"guid": answer["guid"], "registered": bool(answer["registered"])}


def _import_local(db: str, pki: Pki, vouchers: list[tuple[Path, Voucher]]) -> list[dict[str, Any]]:
    from afield.fdo.server import SqlOwnerStore
    from afield.fdo.server.store import VoucherExistsError

    store = SqlOwnerStore(db, owner_key=pki.owner.public_key())
    imported = []
    try:
        for path, voucher in vouchers:
            try:
                store.add(voucher)
            except (VoucherExistsError, VerifyError) as e:
                raise _bad_input(path, str(e)) from None
            imported.append({"guid": str(voucher.header.guid), "registered": False})
    finally:
        store.close()
    return imported
