"""``afield fleet``, ``afield rollout`` and ``afield device ls|show|app``: the operator's commands.

They talk to a running fleet manager's admin API (``--server``, ``$AFIELD_SERVER``) with a
bearer token (``--token``, ``$AFIELD_TOKEN``; ``afield admin token create`` makes one):

* ``fleet create NAME --selector S --policy FILE_OR_JSON [--release IMAGE/ARCH/VERSION]``,
  ``fleet ls``, ``fleet show NAME``;
* ``fleet app set FLEET NAME --manifests FILE [--image REF ...]``, ``fleet app rm FLEET NAME``,
  ``fleet app list FLEET``, ``fleet app show FLEET NAME`` (prints the manifests): applications,
  Kubernetes manifests every device of the fleet runs; ``device app ...`` the same for one
  device (it replaces a fleet's application of the same name), registered on the ``device``
  group by :mod:`afield.cli.device`;
* ``rollout start FLEET [--release ...]``, ``rollout status ID [--watch]`` (a live view until the
  rollout completes, pauses, aborts or waits for approval), ``rollout ls``, and ``pause``,
  ``resume``, ``approve``, ``abort`` of a rollout;
* ``device ls [--label k=v ...] [--status S] [--limit N] [--all]`` and ``device show ID``,
  registered on the ``device`` group by :mod:`afield.cli`.

Every command has ``--json``, which prints the API's JSON. The fleet manager checks what is
sent (selectors, policies, releases) and its message is shown as ``error: ...`` (exit 2).
The HTTP client (:mod:`afield.fleet.client`, httpx) is imported only when a command runs, since
a device's ``afield`` has no httpx.

What it leaves to others: the requests and their errors (:mod:`afield.fleet.client`), the API
(:mod:`afield.fleet.api`), tokens (``afield admin token``).
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import RenderableType
from rich.live import Live
from rich.text import Text

from afield.cli._fleet_views import (
    application_state,
    device_rollout,
    fields,
    fleet_lines,
    labels,
    new_table,
    print_table,
    release_name,
    rollout_view,
    styled,
    summary,
    when,
)
from afield.cli._output import console, err_console, print_json
from afield.errors import FleetError

if TYPE_CHECKING:
    from afield.fleet.client import FleetClient

__all__ = ["device_apps", "device_ls", "device_show", "fleet_app", "fleet_apps", "rollout_app"]

DEFAULT_SERVER = "http://127.0.0.1:8080"
SETTLED = ("completed", "paused", "aborted", "waiting_approval")  # where --watch stops

fleet_app = typer.Typer(
    help="Fleets of the fleet manager: devices chosen by labels, and a rollout policy.",
    no_args_is_help=True,
)
rollout_app = typer.Typer(
    help="Rollouts of a release over a fleet: start, watch and steer them.", no_args_is_help=True
)
fleet_apps = typer.Typer(
    help="Applications of a fleet: Kubernetes manifests every device of the fleet runs.",
    no_args_is_help=True,
)
device_apps = typer.Typer(
    help="A device's own applications: Kubernetes manifests that replace its fleets' of the "
    "same name.",
    no_args_is_help=True,
)
fleet_app.add_typer(fleet_apps, name="app")

ServerOption = typer.Option(
    DEFAULT_SERVER, "--server", envvar="AFIELD_SERVER", help="The fleet manager's URL."
)
TokenOption = typer.Option(
    None,
    "--token",
    envvar="AFIELD_TOKEN",
    show_default=False,
    help="An API token (afield admin token create); prefer $AFIELD_TOKEN, which ps does not show.",
)
JsonOption = typer.Option(False, "--json", help="Print the API's JSON.")
ReleaseOption = typer.Option(
    None, "--release", help="A registered release as image/arch/version (gateway/x86_64/1.2.0)."
)
RolloutId = typer.Argument(..., min=1, help="The rollout's id.")


def _user_error(message: str) -> FleetError:
    error = FleetError(message)
    error.user_error = True
    return error


@contextmanager
def _client(server: str, token: str | None) -> Iterator[FleetClient]:
    if not token:
        raise _user_error(
            "no API token: pass --token or set AFIELD_TOKEN "
            "(afield admin token create NAME --role viewer --db URL makes one)"
        )
    try:
        from afield.fleet.client import FleetClient  # httpx: not on devices
    except ImportError as e:
        raise FleetError(
            f"the operator commands need httpx ({e}): install afield[server]"
        ) from None
    with FleetClient(server, token) as client:
        yield client


def _release(text: str | None) -> dict[str, str] | None:
    """``--release image/arch/version`` as the API's release reference (inside :func:`_client`)."""
    if text is None:
        return None
    from afield.fleet.client import release_ref

    return release_ref(text)


# --- fleets ----------------------------------------------------------------------------------


def _load_policy(value: str) -> dict[str, Any]:
    """A rollout policy from inline JSON, a ``.toml`` or a JSON file (the server checks it)."""
    if value.lstrip().startswith("{"):
        where, text, toml = "--policy", value, False
    else:
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise _user_error(
                f"--policy {value}: cannot read it ({reason}); expected a JSON or TOML file "
                'or inline JSON such as {"batches": [1, "10%", "100%"]}'
            ) from None
        where, toml = str(path), path.suffix == ".toml"
    try:
        policy = tomllib.loads(text) if toml else json.loads(text)
    except ValueError as e:
        kind = "TOML" if toml else "JSON"
        raise _user_error(f"{where}: not valid {kind} ({e})") from None
    if not isinstance(policy, dict):
        raise _user_error(f"{where}: expected a table of policy fields, such as batches")
    return policy


@fleet_app.command("create")
def fleet_create(
    name: str = typer.Argument(..., help="The fleet's name: lowercase letters, digits and '-'."),
    selector: str = typer.Option(
        "", "--selector", help="Label selector: k=v, k!=v, k, !k joined by ',' (default: all)."
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Rollout policy: a JSON or .toml file, or inline JSON (default: one 100% batch).",
    ),
    release: str | None = ReleaseOption,
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a fleet (needs an admin token)."""
    rules = None if policy is None else _load_policy(policy)
    with _client(server, token) as client:
        target = _release(release)
        fleet = client.create_fleet(name, selector=selector, policy=rules, target_release=target)
    if as_json:
        print_json(fleet)
        return
    console.print(f"created fleet {fleet['name']}", markup=False)
    console.print(fleet_lines(fleet))


@fleet_app.command("ls")
def fleet_ls(
    server: str = ServerOption, token: str | None = TokenOption, as_json: bool = JsonOption
) -> None:
    """List fleets by name."""
    with _client(server, token) as client:
        fleets = client.list_fleets()
    if as_json:
        print_json({"data": fleets, "count": len(fleets), "next_cursor": None})
        return
    if not fleets:
        console.print("no fleets (afield fleet create NAME --selector ... makes one)")
        return
    table = new_table("NAME", "SELECTOR", "TARGET RELEASE", "BATCHES", "UPDATED")
    for fleet in fleets:
        batches = (fleet.get("policy") or {}).get("batches", [])
        table.add_row(
            Text(fleet["name"]),
            Text(fleet.get("selector") or "(every device)"),
            Text(release_name(fleet.get("target_release"))),
            Text(", ".join(str(b) for b in batches)),
            Text(when(fleet.get("updated"))),
        )
    print_table(table)


@fleet_app.command("show")
def fleet_show(
    name: str = typer.Argument(..., help="The fleet's name."),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a fleet: selector, target release and rollout policy."""
    with _client(server, token) as client:
        fleet = client.show_fleet(name)
    if as_json:
        print_json(fleet)
        return
    console.print(fleet_lines(fleet))


# --- rollouts --------------------------------------------------------------------------------


def _watch(client: FleetClient, rollout_id: int, interval: float) -> None:
    """Show the rollout live until it settles (see :data:`SETTLED`) or Ctrl-C."""
    rollout = client.show_rollout(rollout_id)
    with Live(rollout_view(rollout), console=console, auto_refresh=False) as live:
        try:
            while rollout["status"] not in SETTLED:
                time.sleep(interval)
                rollout = client.show_rollout(rollout_id)
                live.update(rollout_view(rollout), refresh=True)
        except KeyboardInterrupt:
            err_console.print("stopped watching")


@rollout_app.command("start")
def rollout_start(
    fleet: str = typer.Argument(..., help="The fleet to roll out."),
    release: str | None = typer.Option(
        None, "--release", help="image/arch/version to roll out (default: the fleet's target)."
    ),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Start rolling a fleet out to a release (needs an admin token)."""
    with _client(server, token) as client:
        rollout = client.start_rollout(fleet, _release(release))
    if as_json:
        print_json(rollout)
        return
    console.print(summary(rollout))
    console.print(f"watch it: afield rollout status {rollout['id']} --watch", markup=False)


@rollout_app.command("status")
def rollout_status(
    rollout_id: int = RolloutId,
    watch: bool = typer.Option(
        False, "--watch", help="Refresh until it completes, pauses, aborts or awaits approval."
    ),
    interval: float = typer.Option(
        2.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."
    ),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a rollout: status, batch and progress (live with --watch)."""
    if watch and as_json:
        raise _user_error(
            "--watch draws a live view and cannot print JSON: "
            "poll 'afield rollout status ID --json' instead"
        )
    with _client(server, token) as client:
        if watch:
            _watch(client, rollout_id, interval)
            return
        rollout = client.show_rollout(rollout_id)
    if as_json:
        print_json(rollout)
        return
    console.print(rollout_view(rollout))


@rollout_app.command("ls")
def rollout_ls(
    fleet: str | None = typer.Option(None, "--fleet", help="Only this fleet's rollouts."),
    status: str | None = typer.Option(
        None, "--status", help="Only rollouts in this status (running, paused, ...)."
    ),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="At most this many."),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """List rollouts, newest first."""
    with _client(server, token) as client:
        page = client.list_rollouts(fleet=fleet, status=status, limit=limit)
    if as_json:
        print_json(page)
        return
    if not page["data"]:
        console.print("no rollouts (afield rollout start FLEET starts one)")
        return
    table = new_table("ID", "FLEET", "RELEASE", "STATUS", "BATCH", "SUCCEEDED", "UPDATED")
    for rollout in page["data"]:
        progress = rollout.get("progress") or {}
        table.add_row(
            str(rollout["id"]),
            Text(rollout["fleet"]),
            Text(release_name(rollout.get("release"))),
            styled(rollout["status"]),
            f"{int(rollout['batch']) + 1}/{rollout['batches']}",
            f"{progress.get('succeeded', 0)}/{progress.get('selected', 0)}",
            when(rollout.get("updated")),
        )
    print_table(table)


def _acted(rollout: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(rollout)
    else:
        console.print(summary(rollout))


ReasonOption = typer.Option(None, "--reason", help="Why (shown as the rollout's reason).")


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: int = RolloutId,
    reason: str | None = ReasonOption,
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Pause a rollout: no more devices are told to update."""
    with _client(server, token) as client:
        _acted(client.pause_rollout(rollout_id, reason), as_json)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: int = RolloutId,
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Resume a paused rollout, accepting the failures so far."""
    with _client(server, token) as client:
        _acted(client.resume_rollout(rollout_id), as_json)


@rollout_app.command("approve")
def rollout_approve(
    rollout_id: int = RolloutId,
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Start the next batch of a rollout waiting for approval."""
    with _client(server, token) as client:
        _acted(client.approve_rollout(rollout_id), as_json)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: int = RolloutId,
    reason: str | None = ReasonOption,
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """End a rollout for good."""
    with _client(server, token) as client:
        _acted(client.abort_rollout(rollout_id, reason), as_json)


# --- devices ---------------------------------------------------------------------------------


def device_ls(
    label: list[str] = typer.Option(
        [], "--label", help="Only devices with this key=value label; repeat for more (all hold)."
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only devices in this status: Online, Updating, Degraded, ..."
    ),
    limit: int = typer.Option(100, "--limit", min=1, max=500, help="Devices per page."),
    every: bool = typer.Option(False, "--all", help="Every page, not only the first."),
    cursor: str | None = typer.Option(
        None, "--cursor", help="Start after this next_cursor (the next page)."
    ),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """List the fleet manager's devices by id, filtered by labels and status."""
    with _client(server, token) as client:
        if every:
            devices = client.all_devices(labels=label, status=status, page=limit)
            page: dict[str, Any] = {"data": devices, "count": len(devices), "next_cursor": None}
        else:
            page = client.list_devices(labels=label, status=status, limit=limit, cursor=cursor)
    if as_json:
        print_json(page)
        return
    if not page["data"]:
        console.print("no devices")
        return
    table = new_table("ID", "NAME", "STATUS", "VERSION", "LABELS", "LAST SEEN", "ROLLOUT")
    for device in page["data"]:
        table.add_row(
            Text(device["id"]),
            Text(device.get("name") or ""),
            styled(device["status"]),
            Text(device.get("current_version") or "-"),
            Text(labels(device.get("labels"))),
            when(device.get("last_seen")),
            device_rollout(device),
        )
    print_table(table)
    if page.get("next_cursor"):
        err_console.print(
            f"more devices follow: --all, or --cursor {page['next_cursor']}", markup=False
        )


def device_show(
    device_id: str = typer.Argument(..., help="The device's id."),
    server: str = ServerOption,
    token: str | None = TokenOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one device: status, versions, labels and its place in a rollout."""
    with _client(server, token) as client:
        device = client.show_device(device_id)
    if as_json:
        print_json(device)
        return
    health = device.get("health_ok")
    rows: list[tuple[str, RenderableType]] = [
        ("device", Text(device["id"])),
        ("name", Text(device.get("name") or "-")),
        ("status", styled(device["status"])),
        ("labels", Text(labels(device.get("labels")) or "-")),
        ("current", Text(device.get("current_version") or "-")),
        ("commit", Text(device.get("current_commit") or "-")),
        ("pending", Text(device.get("pending_version") or "-")),
        ("rollback", Text(device.get("rollback_version") or "-")),
        ("health", Text("-" if health is None else "ok" if health else "failing")),
        ("last seen", Text(when(device.get("last_seen")))),
        ("rolled back", Text(when(device.get("rolled_back_at")))),
        ("rollout", Text(device_rollout(device))),
    ]
    for application in device.get("applications") or []:
        rows.append((f"app {application['name']}", application_state(application)))
    console.print(fields(rows))


# --- applications ----------------------------------------------------------------------------

MAX_MANIFEST_BYTES = 1 << 20  # what is read of a manifests file (the server takes 256 Ki chars)


def _read_manifests(path: Path) -> str:
    """The text of a manifests file; a user error naming it if it cannot be sent."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise _user_error(
            f"--manifests {path}: cannot read it ({e.strerror or e}); expected a YAML file of "
            "Kubernetes manifests"
        ) from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise _user_error(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _user_error(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise _user_error(f"{path}: empty; expected Kubernetes manifests (a Pod, a Deployment...)")
    return text


def _register_application_commands(group: typer.Typer, owner: str, noun: str) -> None:
    """``set``, ``rm``, ``list`` (``ls``) and ``show`` on ``group``, for a fleet or a device."""
    metavar = noun if noun == "fleet" else "device_id"
    of = f"The {noun}'s name." if noun == "fleet" else f"The {noun}'s id."
    where = (
        "its devices apply it at their next poll"
        if noun == "fleet"
        else "the device applies it at its next poll"
    )
    gone = (
        "its devices remove it at their next poll"
        if noun == "fleet"
        else "the device runs its fleets' application of that name, if any, instead"
    )

    @group.command("set")
    def app_set(
        owner_name: str = typer.Argument(..., metavar=metavar, help=of),
        name: str = typer.Argument(..., help="The application's name: a DNS label (web, db-1)."),
        manifests: Path = typer.Option(
            ...,
            "--manifests",
            help="A YAML file of Kubernetes manifests (Pod, Deployment, ConfigMap, Secret, "
            "PersistentVolumeClaim).",
        ),
        image: list[str] = typer.Option(
            [],
            "--image",
            help="An image to pull; repeat for more (default: every image the manifests name).",
        ),
        server: str = ServerOption,
        token: str | None = TokenOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Set an application (new or changed manifests): {where}."""
        text = _read_manifests(manifests)
        with _client(server, token) as client:
            try:
                answer = client.set_application(owner, owner_name, name, text, image or None)
            except FleetError as e:
                if getattr(e, "field", None) == "manifests":
                    raise _user_error(f"{manifests}: {e}") from None
                raise
        if as_json:
            print_json(answer)
            return
        images = ", ".join(answer.get("images") or []) or "-"
        console.print(
            f"set application {answer['name']} on {noun} {owner_name}: "
            f"digest {str(answer['digest'])[:12]}, images {images}",
            markup=False,
        )

    app_set.__doc__ = (app_set.__doc__ or "").format(where=where)

    @group.command("rm")
    def app_rm(
        owner_name: str = typer.Argument(..., metavar=metavar, help=of),
        name: str = typer.Argument(..., help="The application's name."),
        server: str = ServerOption,
        token: str | None = TokenOption,
    ) -> None:
        """Remove an application: {gone}."""
        with _client(server, token) as client:
            client.delete_application(owner, owner_name, name)
        console.print(f"removed application {name} from {noun} {owner_name}", markup=False)

    app_rm.__doc__ = (app_rm.__doc__ or "").format(gone=gone)

    def app_list(
        owner_name: str = typer.Argument(..., metavar=metavar, help=of),
        server: str = ServerOption,
        token: str | None = TokenOption,
        as_json: bool = JsonOption,
    ) -> None:
        answer: dict[str, Any]
        with _client(server, token) as client:
            answer = client.list_applications(owner, owner_name)
        if as_json:
            print_json(answer)
            return
        if not answer.get("data"):
            console.print(
                f"no applications on {noun} {owner_name} (afield {noun} app set {owner_name} "
                "NAME --manifests FILE sets one)",
                markup=False,
            )
            return
        table = new_table("NAME", "DIGEST", "IMAGES", "UPDATED", "BY")
        for application in answer["data"]:
            table.add_row(
                Text(application["name"]),
                Text(str(application["digest"])[:12]),
                Text(", ".join(application.get("images") or []) or "-"),
                Text(when(application.get("updated"))),
                Text(application.get("updated_by") or "-"),
            )
        print_table(table)

    app_list.__doc__ = (
        "List the fleet's applications by name."
        if noun == "fleet"
        else "List the device's own applications by name (device show lists all it runs)."
    )
    group.command("list")(app_list)
    group.command("ls", hidden=True)(app_list)

    @group.command("show")
    def app_show(
        owner_name: str = typer.Argument(..., metavar=metavar, help=of),
        name: str = typer.Argument(..., help="The application's name."),
        server: str = ServerOption,
        token: str | None = TokenOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Print an application's manifests as they were set (--json: with digest and images)."""
        with _client(server, token) as client:
            answer = client.show_application(owner, owner_name, name)
        if as_json:
            print_json(answer)
            return
        print(answer["manifests"], end="" if str(answer["manifests"]).endswith("\n") else "\n")


_register_application_commands(fleet_apps, "fleets", "fleet")
_register_application_commands(device_apps, "devices", "device")
