"""``afield image``: list, show and compare the images in an afield repository; build disks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from afield.cli._output import console, err_console, print_json
from afield.image import diff_packages, image_info, list_images, open_repository

app = typer.Typer(help="Inspect composed images.", no_args_is_help=True)

RepoOption = typer.Option(..., "--repo", help="The afield repository.")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


@app.command("ls")
def ls(repo: Path = RepoOption, as_json: bool = JsonOption) -> None:
    """List images (refs) with version, commit and size."""
    images = list_images(open_repository(repo))
    if as_json:
        print_json(
            [
                {k: v for k, v in i.to_dict().items() if k != "packages"}
                | {"packages": len(i.packages)}
                for i in images
            ]
        )
        return
    table = Table("ref", "version", "commit", "packages", "size")
    for i in images:
        table.add_row(
            "\n".join(i.refs),
            i.version or "-",
            i.checksum[:12],
            str(len(i.packages)),
            _size(i.size),
        )
    console.print(table)


@app.command("show")
def show(
    target: str = typer.Argument(..., metavar="REF|CHECKSUM"),
    repo: Path = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one image: version, kernel, kernel arguments, size and packages."""
    info = image_info(open_repository(repo), target)
    if as_json:
        print_json(info.to_dict())
        return
    console.print(f"commit     {info.checksum}")
    console.print(f"refs       {', '.join(info.refs) or '-'}")
    console.print(f"image      {info.image or '-'} ({info.arch or '-'})")
    console.print(f"version    {info.version or '-'}")
    console.print(f"timestamp  {_when(info.timestamp)}")
    console.print(f"kernel     {info.kernel or '-'}")
    console.print(f"kargs      {' '.join(info.kernel_args) or '-'}")
    console.print(f"size       {_size(info.size)}")
    console.print(f"packages   {len(info.packages)}")
    for name, version in info.packages.items():
        console.print(f"  {name} {version}")


@app.command("diff")
def diff(
    a: str = typer.Argument(..., metavar="A", help="The old image (ref or checksum)."),
    b: str = typer.Argument(..., metavar="B", help="The new image (ref or checksum)."),
    repo: Path = RepoOption,
    as_json: bool = JsonOption,
) -> None:
    """Packages added, removed and changed from A to B (like rpm-ostree db diff)."""
    ostree_repo = open_repository(repo)
    old, new = image_info(ostree_repo, a), image_info(ostree_repo, b)
    result = diff_packages(old.packages, new.packages)
    if as_json:
        print_json({"from": old.checksum, "to": new.checksum, **result.to_dict()})
        return
    console.print(f"{old.version} ({old.checksum[:12]}) -> {new.version} ({new.checksum[:12]})")
    if result.empty:
        console.print("no package changes")
    for change in result.changed:
        console.print(f"  [yellow]~[/] {change.name} {change.old} -> {change.new}")
    for name, version in result.added.items():
        console.print(f"  [green]+[/] {name} {version}")
    for name, version in result.removed.items():
        console.print(f"  [red]-[/] {name} {version}")


@app.command("build-disk")
def build_disk_command(
    repo: Path = RepoOption,
    commit: str = typer.Option(..., "--commit", help="The image to install (ref or checksum)."),
    arch: str = typer.Option("x86_64", "--arch", help="x86_64 or aarch64."),
    firmware: str = typer.Option("bios", "--firmware", help="bios (x86_64 only) or uefi."),
    size: str = typer.Option("4G", "--size", help="Disk size: 4G, 8G, 3500M..."),
    output: Path = typer.Option(..., "--output", "-o", help="The disk image file to write."),
    server: str | None = typer.Option(
        None, "--server", help="Fleet manager URL for the device agent's factory config."
    ),
    trust_root: Path | None = typer.Option(
        None, "--trust-root", help="The update repository's TUF root.json to trust."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Write a bootable GPT disk image: COMMIT deployed on /, GRUB for BIOS or UEFI."""
    from afield.disk import Layout, build_disk, parse_size

    layout = Layout.new(arch=arch, firmware=firmware, size=parse_size(size))
    with Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        steps: list[TaskID] = []

        def step(text: str) -> None:
            if steps:
                progress.update(steps[-1], completed=1)
            steps.append(progress.add_task(text, total=1))

        disk = build_disk(
            repo, commit, output, layout, server=server, trust_root=trust_root, progress=step
        )
        if steps:
            progress.update(steps[-1], completed=1)
    if as_json:
        print_json(disk.to_dict())
        return
    console.print(f"{disk.path}: {disk.version or '-'} {disk.commit[:12]}", markup=False)
    console.print(
        f"  {layout.arch} {layout.firmware}, {layout.size // 2**20} MiB "
        f"({disk.allocated / 1e6:.0f} MB allocated), root UUID {layout.root_uuid}",
        markup=False,
    )
