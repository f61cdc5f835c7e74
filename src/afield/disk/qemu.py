"""Boot a disk image in QEMU once and read what its serial console says.

One call is one power cycle: QEMU runs with ``-no-reboot``, so a guest that reboots (an update
on trial failed its health check, or the agent switches to a staged release) ends the run just
as one that powers off; the next call boots the same disk again, with GRUB's boot counter where
the last boot left it. The console is read line by line as it arrives, each line stamped with
the seconds since QEMU started, which is how boot times are measured.

The guest has one network card on QEMU's user-mode network, restricted: it gets an address by
DHCP and nothing leaves it except ``forwards``, where a connection from the guest to
``10.0.2.100:<port>`` reaches ``127.0.0.1:<host port>`` on this machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from afield.disk._tools import require
from afield.errors import DiskError

__all__ = ["GUEST_HOST", "BootMarker", "BootRun", "Machine", "boot"]

GUEST_HOST = "10.0.2.100"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
_MARKER = re.compile(
    r"afield-boot: checksum=(?P<checksum>[0-9a-f]{64}) health=(?P<health>healthy|unhealthy) "
    r"rollback=(?P<rollback>yes|no)"
)
# systemd's greeting once the real root runs; GRUB greets too, and the initramfs's systemd says
# "(Initramfs)".
_USERSPACE = re.compile(r"Welcome to (?!GRUB)(?!.*Initramfs).*!")
_FIRMWARE = {
    ("x86_64", "uefi"): (
        Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ),
    ("aarch64", "uefi"): (
        Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
        Path("/usr/share/AAVMF/AAVMF_VARS.fd"),
    ),
}
_FIRMWARE_PACKAGES = {"x86_64": "ovmf", "aarch64": "qemu-efi-aarch64"}


@dataclass(frozen=True)
class BootMarker:
    """The line afield's health check prints: what booted and what it decided."""

    checksum: str
    healthy: bool
    rollback: bool
    seconds: float


@dataclass(frozen=True)
class BootRun:
    """One power cycle: the console, when userspace and the marker came, how it ended."""

    lines: tuple[tuple[float, str], ...]
    seconds: float
    returncode: int | None
    timed_out: bool
    userspace: float | None
    marker: BootMarker | None

    @property
    def console(self) -> str:
        """The console text, escape sequences removed."""
        return "\n".join(text for _, text in self.lines)

    def first(self, text: str) -> float | None:
        """Seconds until the first console line containing ``text``, if any did."""
        return next((t for t, line in self.lines if text in line), None)

    def tail(self, count: int = 40) -> str:
        """The last lines, for an assertion message."""
        return "\n".join(text for _, text in self.lines[-count:])


@dataclass(frozen=True)
class Machine:
    """The virtual machine a disk boots in.

    Attributes:
        disk: the raw disk image (changed in place, as a real disk is).
        arch: ``x86_64`` or ``aarch64``.
        firmware: ``bios`` or ``uefi``; UEFI variables live in ``vars_file`` (created from the
            firmware's template on first use).
        forwards: guest port on ``10.0.2.100`` -> port on 127.0.0.1.
    """

    disk: Path
    arch: str = "x86_64"
    firmware: str = "bios"
    memory_mib: int = 1024
    cpus: int = 2
    vars_file: Path | None = None
    forwards: Mapping[int, int] = field(default_factory=dict)

    def command(self) -> list[str]:
        """The QEMU command line."""
        if self.arch == "x86_64":
            argv = [
                require("qemu-system-x86_64"),
                "-machine",
                "q35" if self.firmware == "uefi" else "pc",
            ]
        elif self.arch == "aarch64":
            argv = [require("qemu-system-aarch64"), "-machine", "virt", "-cpu", "cortex-a57"]
        else:
            raise DiskError(f"arch {self.arch!r} is not supported; supported: x86_64, aarch64")
        argv += ["-m", str(self.memory_mib), "-smp", str(self.cpus)]
        argv += ["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
        if self.firmware == "uefi":
            code, template = self._firmware_files()
            variables = self.vars_file or self.disk.with_suffix(".vars.fd")
            if not variables.exists():
                shutil.copyfile(template, variables)
            argv += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
            ]  # fmt: skip
        elif self.firmware != "bios" or self.arch != "x86_64":
            raise DiskError(f"{self.arch} cannot boot with firmware {self.firmware!r}")
        argv += ["-drive", f"file={self.disk},format=raw,if=virtio"]
        # Always a network card, so the guest's network comes up at once (DHCP from QEMU)
        # instead of waiting for one; restricted, so only the forwards leave the guest.
        rules = "".join(
            f",guestfwd=tcp:{GUEST_HOST}:{guest}-tcp:127.0.0.1:{host}"
            for guest, host in sorted(self.forwards.items())
        )
        argv += ["-netdev", f"user,id=net0,restrict=on{rules}"]
        argv += ["-device", "virtio-net-pci,netdev=net0"]
        return argv

    def dump_devicetree(self, output: Path) -> Path:
        """Write the DeviceTree QEMU gives this machine (``-machine virt`` only) to ``output``.

        The blob describes exactly this machine (CPUs, memory, devices), so an image can carry
        it as its ``[customizations.afield.devicetree]`` default, as a board's image carries the
        board's.
        """
        argv = self.command()
        # The disk is not part of the tree (virtio disks sit behind PCI), and need not exist.
        drive = argv.index(f"file={self.disk},format=raw,if=virtio")
        del argv[drive - 1 : drive + 1]
        index = argv.index("-machine") + 1
        if argv[index] != "virt":
            raise DiskError(f"{self.arch} {argv[index]} machines have no DeviceTree to dump")
        argv[index] = f"virt,dumpdtb={output}"
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0 or not output.is_file():
            raise DiskError(f"QEMU did not dump its DeviceTree: {done.stderr.strip()[-500:]}")
        return output

    def _firmware_files(self) -> tuple[Path, Path]:
        code, template = _FIRMWARE[(self.arch, "uefi")]
        if not code.is_file() or not template.is_file():
            package = _FIRMWARE_PACKAGES[self.arch]
            raise DiskError(f"UEFI firmware {code} is missing (Debian package {package})")
        return code, template


def boot(machine: Machine, *, timeout: float = 600, log: Path | None = None) -> BootRun:
    """Power ``machine`` on and wait until it powers off, reboots or ``timeout`` passes."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    process = subprocess.Popen(
        machine.command(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sink = log.open("w", errors="replace") if log is not None else None

    stream = process.stdout
    if stream is None:  # pragma: no cover - Popen was given stdout=PIPE
        raise DiskError("QEMU's console was not captured")

    def read() -> None:
        for raw in stream:
            text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            lines.append((round(time.monotonic() - started, 2), text))
            if sink is not None:
                sink.write(text + "\n")
                sink.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        process.kill()
        process.wait()
    finally:
        reader.join(timeout=10)
        stream.close()
        if sink is not None:
            sink.close()
    seconds = round(time.monotonic() - started, 2)
    snapshot = tuple(lines)
    return BootRun(
        lines=snapshot,
        seconds=seconds,
        returncode=process.returncode,
        timed_out=timed_out,
        userspace=next(
            (t for t, text in snapshot if _USERSPACE.search(text)),
            None,
        ),
        marker=_marker(snapshot),
    )


def _marker(lines: tuple[tuple[float, str], ...]) -> BootMarker | None:
    for seconds, text in lines:
        found = _MARKER.search(text)
        if found:
            return BootMarker(
                checksum=found["checksum"],
                healthy=found["health"] == "healthy",
                rollback=found["rollback"] == "yes",
                seconds=seconds,
            )
    return None
