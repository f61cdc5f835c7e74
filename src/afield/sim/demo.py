"""The fleet half of ``afield demo``: a fleet manager, three devices onboarded over FDO, their
agents, and the operator's rollouts, all real and all on 127.0.0.1.

:func:`fleet_site` starts the fleet manager (SQLite, the repository at ``/repo/``, FDO's
rendezvous and owner mounted, the rollout runner ticking) and a manufacturer (DI) whose vouchers
send devices to it, and gives back a :class:`DemoSite`:

* :meth:`DemoSite.make_device` lays out a device sysroot, installs the first release at the
  "factory", runs DI, sells the voucher to the owner (the fleet manager registers it at once,
  TO0), onboards the device (TO1, TO2) and boots it once;
* :meth:`DemoSite.agents` runs ``afield device run --simulate-reboot`` for each device, each in
  its own process, as a device would run ``afield-agent.service``;
* :meth:`DemoSite.roll_out` starts a rollout of the fleet through the admin API and follows it
  until it completes or pauses, telling ``say`` each change.

What it leaves to others: composing and publishing (the caller), the printing of the summary
(:mod:`afield.cli.demo`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from afield._serving import running
from afield.device.bootseq import boot_once
from afield.device.lifecycle import Device
from afield.device.onboard import OnboardOptions, OnboardResult, manufacture, onboard
from afield.device.update import device_arch
from afield.errors import AfieldError
from afield.fdo.pki import Pki, init_pki, load_pki
from afield.fdo.rendezvous import RendezvousDirective, RendezvousInfo, RvProtocol
from afield.fdo.server import ManufacturerSettings, SqlVoucherStore, create_manufacturer_app
from afield.fleet.app import FleetSettings, create_app
from afield.fleet.auth import create_token
from afield.fleet.fdo import FdoSettings

__all__ = ["DemoDevice", "DemoSite", "RolloutWatch", "fleet_site"]

Say = Callable[[str], None]
_FINAL = ("completed", "paused", "aborted")


@dataclass
class DemoDevice:
    """One simulated device: its sysroot and what onboarding gave it."""

    name: str
    device: Device
    onboarded: OnboardResult
    log: Path

    @property
    def device_id(self) -> str:
        """The id the fleet manager knows it by (its GUID after TO2)."""
        return str(self.onboarded.new_guid)


@dataclass
class RolloutWatch:
    """How a rollout ended, and every state the demo saw it in."""

    rollout: dict[str, Any]
    seconds: float
    seen: list[str] = field(default_factory=list)


@dataclass
class DemoSite:
    """The running fleet manager and manufacturer of :func:`fleet_site`."""

    workdir: Path
    url: str
    manufacturer_url: str
    pki: Pki
    vouchers: SqlVoucherStore
    admin: httpx.Client

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An admin API call; its JSON answer.

        Raises:
            AfieldError: the fleet manager refused it (its message).
        """
        response = self.admin.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AfieldError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def make_device(self, name: str, repo: Path, commit: str) -> DemoDevice:
        """A device installed with ``commit``, manufactured, sold, onboarded and booted once."""
        sysroot = self.workdir / "devices" / name
        device = Device.init(sysroot, "gateway")
        device.install(repo, commit)
        made, _ = manufacture(device, self.manufacturer_url, device_info=f"acme gateway {name}")
        stored = self.vouchers.get(made.guid)
        if stored is None:
            raise AfieldError(f"the manufacturer kept no voucher for {made.guid}")
        voucher = stored.voucher.extend(self.pki.manufacturer.key, self.pki.owner.public_key())
        self.api("POST", "/api/v1/vouchers", content=voucher.to_pem().encode())
        result = onboard(device, OnboardOptions(rounds=1, timeout=10))
        boot_once(device)
        return DemoDevice(name, device, result, self.workdir / "logs" / f"{name}.log")

    @contextmanager
    def agents(self, devices: list[DemoDevice], *, poll_wait: int = 5) -> Iterator[None]:
        """Run each device's agent in its own process until the block ends."""
        processes = []
        try:
            for demo in devices:
                demo.log.parent.mkdir(parents=True, exist_ok=True)
                with demo.log.open("w") as log:
                    argv = [sys.executable, "-m", "afield.cli", "device", "run"]
                    argv += ["--sysroot", str(demo.device.sysroot_path), "--simulate-reboot"]
                    argv += ["--poll-wait", str(poll_wait)]
                    processes.append(subprocess.Popen(argv, stdout=log, stderr=log))
            yield
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def wait_until_reported(
        self, devices: list[DemoDevice], version: str, *, timeout: float = 180
    ) -> None:
        """Wait until every device enrolled and reported running ``version`` (Online).

        Raises:
            AfieldError: some did not within ``timeout`` seconds.
        """
        pending = {d.device_id: d for d in devices}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for device_id in list(pending):
                response = self.admin.get(f"/api/v1/devices/{device_id}")
                if response.status_code != 200:
                    continue
                shown = response.json()
                if shown["status"] == "Online" and shown["current_version"] == version:
                    del pending[device_id]
            time.sleep(0.3)
        if pending:
            names = ", ".join(d.name for d in pending.values())
            raise AfieldError(
                f"{names} did not report {version} within {timeout:.0f} s; "
                f"see the agents' logs in {self.workdir / 'logs'}"
            )

    def roll_out(self, version: str, say: Say, *, timeout: float = 600) -> RolloutWatch:
        """Roll the fleet out to ``version``; follow it until it completes or pauses.

        Raises:
            AfieldError: it did neither within ``timeout`` seconds.
        """
        release = {"image": "gateway", "arch": device_arch(), "version": version}
        started = self.api("POST", "/api/v1/fleets/gateways/rollouts", json={"release": release})
        rollout_id, begun = started["id"], time.monotonic()
        watch = RolloutWatch(started, 0.0)
        last = ""
        while time.monotonic() - begun < timeout:
            rollout = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
            line = _progress_line(rollout)
            if line != last:
                say(line)
                watch.seen.append(line)
                last = line
            if rollout["status"] in _FINAL:
                watch.rollout, watch.seconds = rollout, time.monotonic() - begun
                return watch
            time.sleep(0.5)
        raise AfieldError(
            f"rollout {rollout_id} of {version} neither completed nor paused in {timeout:.0f} s; "
            f"see the agents' logs in {self.workdir / 'logs'}"
        )


def _progress_line(rollout: dict[str, Any]) -> str:
    p = rollout["progress"]
    counts = (
        f"{p.get('succeeded', 0)} succeeded, {p.get('unavailable', 0)} updating, "
        f"{p.get('rolled_back', 0) + p.get('health_failed', 0) + p.get('timed_out', 0)} failed, "
        f"{p.get('waiting', 0)} waiting"
    )
    where = f"batch {rollout['batch'] + 1} of {rollout['batches']}"
    reason = f": {rollout['reason']}" if rollout["reason"] else ""
    return f"{rollout['status']}, {where}: {counts}{reason}"


@contextmanager
def fleet_site(workdir: Path, repo: Path, *, policy: dict[str, Any]) -> Iterator[DemoSite]:
    """Serve a fleet manager (with FDO) and a manufacturer from ``workdir``; create the fleet
    ``gateways`` (devices labelled ``site=demo`` by onboarding) with ``policy``."""
    pki_dir = workdir / "pki"
    pki = load_pki(pki_dir) if pki_dir.exists() else init_pki(pki_dir)
    settings = FleetSettings(
        db_url=f"sqlite:///{workdir / 'fleet.db'}",
        repo_dir=repo,
        runner_interval=0.5,
        poll_seconds=5,
        offline_after=60,
        fdo=FdoSettings(pki_dir=pki_dir, labels={"site": "demo"}),
    )
    app = create_app(settings)
    token = create_token(app.state.db, "demo", "admin")
    with ExitStack() as stack:
        vouchers = SqlVoucherStore(f"sqlite:///{workdir / 'manufacturer.db'}")
        stack.callback(vouchers.close)
        url = stack.enter_context(running(app))
        app.state.fdo.ready(url)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        directive = RendezvousDirective.build(
            ip=host, dev_port=int(port), owner_port=int(port), protocol=RvProtocol.HTTP
        )
        factory = ManufacturerSettings(rv_info=RendezvousInfo((directive,)))
        manufacturer_url = stack.enter_context(
            running(create_manufacturer_app(pki, vouchers, factory))
        )
        admin = stack.enter_context(
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        )
        site = DemoSite(workdir, url, manufacturer_url, pki, vouchers, admin)
        site.api(
            "POST",
            "/api/v1/fleets",
            json={"name": "gateways", "selector": "site=demo", "policy": policy},
        )
        yield site
