"""``afield fdo voucher``: show, verify, extend, export and import ownership vouchers.

A voucher is read in PEM or raw CBOR form. A file that cannot be read or is not what it should be
exits 2 naming it; a voucher that does not verify exits 1 naming the entry. Key fingerprints are
the SHA-256 of the key's DER SubjectPublicKeyInfo, so the same key has the same fingerprint
whatever encoding the voucher uses for it.

``export`` reads the manufacturer's store and ``import`` writes the owner's (directly, or through
a running owner server, which registers the voucher at once); their server-side code
(SQLAlchemy) is imported only then, since a device's ``afield`` has none of it.

What it leaves to others: the servers (:mod:`afield.cli.fdo`), the voucher format
(:mod:`afield.fdo.voucher`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from afield.cli._output import console, print_json
from afield.errors import FdoError
from afield.fdo import FdoMessageError, VerifyError, Voucher, VoucherError
from afield.fdo.cbor import decode
from afield.fdo.pki import (
    Pki,
    fingerprint,
    load_certificate,
    load_pki,
    load_private_key,
    verify_device_chain,
)
from afield.fdo.types import PublicKey
from afield.fdo.voucher import OVEntryPayload

if TYPE_CHECKING:
    from afield.fdo.server.store import SqlVoucherStore

__all__ = ["JsonOption", "bad_input", "certificate_key", "voucher_app"]

JsonOption = typer.Option(False, "--json", help="Print JSON.")
voucher_app = typer.Typer(
    help="Show, verify, extend, export and import ownership vouchers.", no_args_is_help=True
)
VoucherArgument = typer.Argument(..., metavar="FILE", help="Ownership voucher (PEM or CBOR).")


def bad_input(path: Path, message: str) -> FdoError:
    error = FdoError(f"{path}: {message}")
    error.user_error = True
    return error


def _load_voucher(path: Path) -> Voucher:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror}") from None
    try:
        return Voucher.load(data)
    except FdoMessageError as e:
        raise bad_input(path, f"not an ownership voucher: {e}") from None


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
            raise bad_input(path, f"entry {index} does not decode: {e}") from None
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
    owner = certificate_key(owner_cert) if owner_cert is not None else None
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
    new_owner = certificate_key(to)
    if not voucher.owner_key().same_key(key.public_key()):
        current = fingerprint(voucher.owner_key())
        raise bad_input(key_path, f"is not the voucher's current owner key ({current})")
    try:
        extended = voucher.extend(key, PublicKey.from_key(new_owner))
    except VoucherError as e:
        raise bad_input(to, str(e)) from None
    try:
        out.write_text(extended.to_pem())
    except OSError as e:
        raise bad_input(out, f"cannot write: {e.strerror}") from None
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
    owner = certificate_key(to) if to is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for voucher in selected:
        if key is not None and owner is not None:
            voucher = voucher.extend(key, PublicKey.from_key(owner))
        path = out_dir / f"{voucher.header.guid}.pem"
        try:
            path.write_text(voucher.to_pem())
        except OSError as e:
            raise bad_input(path, f"cannot write: {e.strerror}") from None
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


def certificate_key(path: Path) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    public = load_certificate(path).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise bad_input(path, "the certificate's key is neither EC nor RSA")
    return public


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
        raise bad_input(path, f"cannot reach the owner at {url}: {e}") from None
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = {}
    if response.status != 201:
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise bad_input(path, f"the owner refused it (HTTP {response.status}): {reason}")
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
                raise bad_input(path, str(e)) from None
            imported.append({"guid": str(voucher.header.guid), "registered": False})
    finally:
        store.close()
    return imported
