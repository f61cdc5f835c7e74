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

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.cli._output import console, print_json
from afield.errors import FdoError
from afield.fdo import FdoMessageError, VerifyError, Voucher, VoucherError
from afield.fdo.cbor import decode
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
from afield.fdo.rendezvous import RendezvousDirective, RendezvousInfo, RvProtocol
from afield.fdo.types import PublicKey
from afield.fdo.voucher import OVEntryPayload

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
    owner: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None
    if owner_cert is not None:
        public = load_certificate(owner_cert).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise _bad_input(owner_cert, "the certificate's key is neither EC nor RSA")
        owner = public
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
    new_owner = load_certificate(to).public_key()
    if not isinstance(new_owner, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise _bad_input(to, "the certificate's key is neither EC nor RSA")
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


serve_app = typer.Typer(help="Run the FDO servers.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


def parse_rendezvous(values: list[str]) -> RendezvousInfo:
    """RendezvousInfo from ``HOST:PORT[/http|/https]`` values (a DNS name or an IP address)."""
    directives: list[RendezvousDirective] = []
    for value in values:
        address, _, scheme = value.partition("/")
        host, _, port_text = address.rpartition(":")
        protocols = {"": RvProtocol.HTTP, "http": RvProtocol.HTTP, "https": RvProtocol.HTTPS}
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise typer.BadParameter(
                f"{value!r}: expected HOST:PORT, optionally /http or /https, e.g. "
                "rv.example.com:8040/https",
                param_hint="--rendezvous",
            )
        if scheme not in protocols:
            raise typer.BadParameter(
                f"{value!r}: the protocol must be http or https", param_hint="--rendezvous"
            )
        port = int(port_text)
        bare = host.strip("[]")
        try:
            ip_address(bare)
            ip, dns = bare, None
        except ValueError:
            ip, dns = None, host
        directives.append(
            RendezvousDirective.build(
                dns=dns, ip=ip, dev_port=port, owner_port=port, protocol=protocols[scheme]
            )
        )
    return RendezvousInfo(tuple(directives))


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
