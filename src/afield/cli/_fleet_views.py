"""How the operator CLI shows fleets, rollouts and devices: rich tables, fields and bars.

Tables fit the terminal's width, and print one line per row when the output is piped, so
``grep`` and ``awk`` work on them. :func:`rollout_view` is what ``afield rollout status``
shows (and ``--watch`` refreshes).

What it leaves to others: the commands and the API calls (:mod:`afield.cli.operator`).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from afield.cli._output import console

_STATUS_STYLE = {  # rollout statuses, then device statuses
    **{"running": "cyan", "waiting_approval": "yellow", "paused": "yellow"},
    **{"completed": "green", "aborted": "red", "Online": "green", "Updating": "cyan"},
    **{"Degraded": "yellow", "RolledBack": "magenta", "Offline": "dim"},
}


def when(value: object) -> str:
    """An API time (ISO 8601) in UTC to the second, ``2025-01-31T14:05:09Z``; ``-`` for none."""
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def styled(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def release_name(release: Mapping[str, Any] | None) -> str:
    if not release:
        return "-"
    return f"{release['image']}/{release['arch']}/{release['version']}"


def new_table(*headers: str) -> Table:
    """A borderless table whose lines start with their first cell (for grep and awk)."""
    return Table(*headers, box=None, pad_edge=False)


def print_table(table: Table) -> None:
    """``table`` fitted to a terminal; piped or redirected, one line per row however wide."""
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(10_000)
    width = Measurement.get(console, wide, table).maximum
    Console(file=console.file, width=max(width, 1), highlight=False).print(table)


def fields(rows: list[tuple[str, RenderableType]]) -> Table:
    """Label/value lines, labels in bold."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def fleet_lines(fleet: Mapping[str, Any]) -> Table:
    policy = fleet.get("policy") or {}
    rows: list[tuple[str, RenderableType]] = [
        ("fleet", Text(str(fleet["name"]))),
        ("selector", Text(fleet.get("selector") or "(every device)")),
        ("target release", Text(release_name(fleet.get("target_release")))),
        ("created", Text(when(fleet.get("created")))),
        ("updated", Text(when(fleet.get("updated")))),
    ]
    for key, value in policy.items():
        shown = "-" if value is None else json.dumps(value) if not isinstance(value, str) else value
        rows.append((f"policy.{key}", Text(shown)))
    return fields(rows)


def summary(rollout: Mapping[str, Any]) -> Text:
    text = Text(f"rollout {rollout['id']} of fleet {rollout['fleet']} to ")
    text.append(release_name(rollout.get("release")))
    text.append(": ")
    text.append_text(styled(str(rollout["status"])))
    if rollout.get("reason"):
        text.append(f" ({rollout['reason']})")
    return text


def bar(label: str, count: int, selected: int, style: str) -> tuple[Text, ProgressBar, Text]:
    bar = ProgressBar(
        total=max(selected, 1),
        completed=min(count, max(selected, 1)),
        width=32,
        complete_style=style,
        finished_style=style,
    )
    return Text(label), bar, Text(f"{count}/{selected}")


def rollout_view(rollout: Mapping[str, Any]) -> RenderableType:
    """A rollout as ``rollout status`` shows it: status, batch and counters as bars."""
    progress: Mapping[str, int] = rollout.get("progress") or {}
    selected = int(progress.get("selected", 0))
    failed = sum(int(progress.get(k, 0)) for k in ("rolled_back", "health_failed", "timed_out"))
    head = fields(
        [
            ("rollout", Text(f"{rollout['id']} of fleet {rollout['fleet']}")),
            ("release", Text(release_name(rollout.get("release")))),
            ("status", styled(str(rollout["status"]))),
            ("reason", Text(rollout.get("reason") or "-")),
            ("batch", Text(f"{int(rollout['batch']) + 1} of {rollout['batches']}")),
            ("updated", Text(when(rollout.get("updated")))),
        ]
    )
    bars = Table.grid(padding=(0, 2))
    bars.add_column(style="bold", no_wrap=True)
    bars.add_column()
    bars.add_column(justify="right")
    for label, count, style in (
        ("succeeded", int(progress.get("succeeded", 0)), "green"),
        ("failed", failed, "red"),
        ("unavailable", int(progress.get("unavailable", 0)), "yellow"),
        ("waiting", int(progress.get("waiting", 0)), "blue"),
        ("up to date", int(progress.get("up_to_date", 0)), "green"),
    ):
        bars.add_row(*bar(label, count, selected, style))
    return Group(
        head, Text(f"{selected} device{'' if selected == 1 else 's'} selected", style="dim"), bars
    )


def labels(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def application_state(application: Mapping[str, Any]) -> Text:
    """How a device's application is, as ``device show`` prints it: the state it reported,
    ``failed: why``, an old version, not reported yet or being removed; its source."""
    desired, reported = application.get("desired_digest"), application.get("reported_digest")
    state = application.get("state")
    if desired is None:
        text = Text(f"not wanted any more (reported {state or '-'}: being removed)", style="dim")
    elif state is None:
        text = Text("not reported yet", style="dim")
    elif state == "failed":
        text = Text(f"failed: {application.get('reason') or 'no reason given'}", style="red")
    else:
        text = styled(str(state))
        if state == "ready":
            text.stylize("green")
    if desired is not None and reported is not None and reported != desired:
        text.append(f" (old version {str(reported)[:12]}; should run {str(desired)[:12]})")
    if application.get("source"):
        text.append(f" [{application['source']}]", style="dim")
    return text


def device_rollout(device: Mapping[str, Any]) -> str:
    rollout = device.get("rollout")
    if not rollout:
        return "-"
    return f"{rollout['rollout_id']} ({rollout['phase']})"
