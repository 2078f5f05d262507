"""The `agfprune` Typer application and its error handling.

Commands are registered from a table of import paths so that adding one is one line; every
command module imports only Typer at top level, so `agfprune --help` starts fast.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import traceback
from typing import Annotated

import typer

from agfprune import __version__
from agfprune.core.errors import EXIT_INTERRUPTED, AgfpruneError

COMMANDS: list[tuple[str, str]] = [
    ("demo", "agfprune.cli.commands.demo:demo_command"),
    ("info", "agfprune.cli.commands.info:info_command"),
    ("eval", "agfprune.cli.commands.evaluate:eval_command"),
    ("calibrate", "agfprune.cli.commands.calibrate:calibrate_command"),
    ("score", "agfprune.cli.commands.score:score_command"),
    ("prune", "agfprune.cli.commands.prune:prune_command"),
    ("finetune", "agfprune.cli.commands.finetune:finetune_command"),
    ("export", "agfprune.cli.commands.export:export_command"),
    ("compare", "agfprune.cli.commands.compare:compare_command"),
]
SUBAPPS: list[tuple[str, str]] = [
    ("route", "agfprune.cli.commands.route:route_app"),
]

app = typer.Typer(
    name="agfprune",
    help="Structural pruning and hybrid routing of vision networks, guided by the AGF utility.",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _resolve(target: str):
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # command not built yet in this version
        raise
    return getattr(module, attr)


def _help_without_command(ctx: typer.Context) -> None:
    """A group called without a command prints its help and exits 0 (Typer's documented pattern)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help(), nl=False)
        raise typer.Exit()


for _name, _target in COMMANDS:
    _function = _resolve(_target)
    if _function is not None:
        app.command(_name)(_function)
for _name, _target in SUBAPPS:
    _subapp = _resolve(_target)
    if _subapp is not None:
        app.add_typer(_subapp, name=_name, no_args_is_help=False, invoke_without_command=True,
                      callback=_help_without_command)


def _version(value: bool) -> None:
    if value:
        print(f"agfprune {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """agfprune: calibrate, score, prune, finetune, export and route vision models."""
    _help_without_command(ctx)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that atomic writes clean up like Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ANN001 - signal handler signature
    raise _Terminated()


def _one_line(message: str) -> str:
    """Control characters (a newline inside a file's key or a path) escaped, so the error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


_DEPRECATION_NOTES: list[str] = []


def _fail(message: str, code: int) -> int:
    if _DEPRECATION_NOTES:  # still one line: the old spelling is mentioned in it
        message += f" ({'; '.join(_DEPRECATION_NOTES)})"
    sys.stderr.write(f"agfprune: error: {_one_line(message)}\n")
    sys.stderr.flush()
    return code


def _usage_errors() -> tuple[type[Exception], ...]:
    """Typer's public base of its (vendored click) usage errors; click's own for typer releases that
    still use the click package."""
    errors: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        errors.append(typer.TyperException)
    try:
        import click
    except ImportError:
        pass
    else:
        errors.append(click.ClickException)
    return tuple(errors)


_USAGE_ERRORS = _usage_errors()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises for expected failures)."""
    from agfprune.cli.aliases import note, rewrite_deprecated

    args, notes = rewrite_deprecated(list(sys.argv[1:] if argv is None else argv))
    _DEPRECATION_NOTES[:] = notes
    debug = "--debug" in args
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = app(args=args, prog_name="agfprune", standalone_mode=False)
        code = int(result) if isinstance(result, int) else 0
        if code == EXIT_INTERRUPTED:  # not standalone, typer *returns* 130 for Ctrl-C
            return _fail("interrupted", EXIT_INTERRUPTED)
        for message in notes:  # after the result, so that they are the last thing a user sees
            note(message)
        return code
    except AgfpruneError as exc:
        if debug:
            traceback.print_exc()
        return _fail(exc.message, exc.exit_code)
    except _USAGE_ERRORS as exc:
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "agfprune"
        return _fail(f"{exc.format_message()} (see `{command} --help`)", exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        code = int(code) if isinstance(code, int) else (0 if code is None else 1)
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
            return _fail("interrupted", EXIT_INTERRUPTED)
        return code
    except (KeyboardInterrupt, typer.Abort):
        return _fail("interrupted", EXIT_INTERRUPTED)
    except _Terminated:
        return _fail("terminated", 128 + signal.SIGTERM)
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()
        detail = text[0][:300] if text else ""
        return _fail(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug for a traceback)", 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _DEPRECATION_NOTES.clear()


class _InterruptWatch:
    """Remembers any Ctrl-C of the process, so that one a library swallowed, or one arriving after the
    results were printed (while flushing or tearing down), still ends the process with exit 130.

    Installed only where SIGINT has its normal handler: a process started with SIGINT ignored (a
    background job of a non-interactive shell, `nohup`) keeps ignoring it, as its parent asked.
    """

    def __init__(self) -> None:
        self.seen = False
        self.reported = False
        self.installed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if self.installed:
            signal.signal(signal.SIGINT, self._while_running)

    def _while_running(self, signum, frame):  # noqa: ANN001 - signal handler signature
        self.seen = True
        raise KeyboardInterrupt

    def _after_results(self, signum, frame):  # noqa: ANN001 - signal handler signature
        self.seen = True

    def finish(self, code: int) -> int:
        """From now on only record Ctrl-C; the exit code is 130 if one came at any time."""
        if self.installed:
            signal.signal(signal.SIGINT, self._after_results)
        if self.seen and code != EXIT_INTERRUPTED:
            return _fail("interrupted", EXIT_INTERRUPTED)
        return code


def main() -> None:
    """Console-script entry point."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            # a file name that is not UTF-8 is printed as its original bytes, not as an encoding error
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    watch = _InterruptWatch()
    try:
        code = run()
    except KeyboardInterrupt:  # between the handlers of run() and here
        code = _fail("interrupted", EXIT_INTERRUPTED)
    code = watch.finish(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `agfprune ... | head` closed the pipe: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(watch.finish(code))
