"""The ``afield`` command line: one typer app, one module per command group.

Commands are thin: parse arguments, call the library, print. Errors are handled once, in
:func:`main`: an :class:`~afield.errors.AfieldError` prints ``error: ...`` and exits 2 when the
user's input is wrong or 1 for any other failure; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from afield import __version__
from afield.cli import (
    admin,
    blueprint,
    compose,
    demo,
    device,
    fdo,
    image,
    keys,
    operator,
    release,
    repo,
    serve,
    sim,
    workloads,
)
from afield.cli._output import err_console
from afield.errors import AfieldError

__all__ = ["app", "main"]

app = typer.Typer(
    name="afield",
    help="Compose, ship, boot and roll back OS images on fleets of field devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(blueprint.app, name="blueprint")
app.add_typer(image.app, name="image")
app.add_typer(keys.app, name="keys")
app.add_typer(release.app, name="release")
app.add_typer(device.app, name="device")
app.add_typer(repo.app, name="repo")
app.add_typer(fdo.app, name="fdo")
app.add_typer(admin.app, name="admin")
app.add_typer(operator.fleet_app, name="fleet")
app.add_typer(operator.rollout_app, name="rollout")
app.add_typer(workloads.app, name="workloads")
# The fleet manager's view of devices, beside the device-side commands of afield.cli.device.
device.app.command("ls")(operator.device_ls)
device.app.command("show")(operator.device_show)
app.command("serve")(serve.serve_command)
app.command("compose")(compose.compose_command)
app.command("demo")(demo.demo_command)
app.command("sim")(sim.sim_command)

_state = {"debug": False}


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """afield: image-based updates for field-deployed Linux devices."""
    _state["debug"] = debug
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # Outside standalone mode click returns a typer.Exit's code instead of raising it.
        result = app(args=argv, standalone_mode=False)
    except AfieldError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2 if e.user_error else 1
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        err_console.print("aborted")
        return 1
    except Exception as e:
        # Usage errors from typer's bundled click: they know how to print themselves.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
