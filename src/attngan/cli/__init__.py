"""The ``attngan`` command line: a thin click layer over the library.

Subcommands live in their own modules and are imported only when used, so ``attngan --help`` is fast
and an optional dependency of one command (e.g. FastAPI for ``serve``) never breaks the others.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import UserError, user_message
from .options import torchrun_world

# command name -> ("module:attribute" relative to attngan.cli, short help)
COMMANDS = {
    "demo": ("train:demo", "Run the whole pipeline on the built-in shapes dataset (CPU, minutes)."),
    "pretrain-damsm": ("train:pretrain_damsm", "Pre-train the DAMSM text and image encoders (Eq. 7-14)."),
    "train": ("train:train", "Train the AttnGAN generator and discriminators (Eq. 1-5)."),
    "sample": ("sample:sample", "Draw images and attention maps from sentences."),
    "evaluate": ("evaluate:evaluate", "R-precision, Inception Score, FID, attribute accuracy of a model."),
    "convert": ("convert:convert", "Convert the original release's .pth files to the native format and back."),
    "data": ("data:data", "Inspect and validate datasets (attngan data check)."),
    "serve": ("serve:serve", "Serve an HTTP API and a web page that draw images from sentences."),
}


# Commands that torchrun may launch (one process per GPU); the others work in one process.
DISTRIBUTED_COMMANDS = ("train", "pretrain-damsm")


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        """A reader that stops early (``attngan train ... | head -1``) is no failure of the command, whose
        work is done when it prints its results: the rest of the output is dropped and the status is 0
        (click would exit 1 without a word)."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            closed = _closed_outputs()
            if not closed:
                raise
            devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's last flush must not fail too
            for fd in closed:
                os.dup2(devnull, fd)
            return None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if torchrun_world()[1] > 1 and name not in DISTRIBUTED_COMMANDS and not ctx.resilient_parsing:

            @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
            def single_process() -> None:
                raise UserError(
                    f"'attngan {name}' runs in one process; start it without torchrun (only "
                    f"{' and '.join(DISTRIBUTED_COMMANDS)} run distributed)"
                )

            return single_process
        target, help_text = COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
            command = getattr(module, attr)
            command.short_help = command.short_help or help_text  # click cuts the docstring at "(Eq."
            return command
        except (ImportError, AttributeError) as exc:
            reason = str(exc)

            @click.command(name=name, help=f"{help_text} (unavailable: {reason})")
            def unavailable() -> None:
                raise click.ClickException(f"'attngan {name}' is not available in this installation: {reason}")

            return unavailable


def _closed_outputs() -> list[int]:
    """The file descriptors of stdout and stderr that are pipes whose reader has gone (poll reports an
    error on them)."""
    import select

    closed = []
    for stream in (sys.stdout, sys.stderr):
        try:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                closed.append(stream.fileno())
        except (AttributeError, OSError, ValueError):  # no file descriptor (a test's buffer), no poll
            continue
    return closed


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="attngan")
def cli() -> None:
    """AttnGAN: fine-grained text-to-image generation with attentional GANs (Xu et al., CVPR 2018).

    Start with `attngan demo`, which trains a small model on the built-in shapes dataset on a CPU.
    """


def _fail(message: str, code: int, show: Callable[[], None] | None = None) -> None:
    """Print ``message`` (or call ``show``) and exit with ``code``; under torchrun, once.

    Every process of a torchrun job runs the same checks and would print the same error. Rank 0 prints at
    once; the others wait a moment, in which torchrun, seeing rank 0 fail, stops them. An error that only
    one of them has (its share of the data) is still printed, after the wait, with its rank.
    """
    rank, world = torchrun_world()
    if world > 1 and rank > 0:
        try:
            time.sleep(3.0)
        except BaseException:  # torchrun's SIGTERM (or Ctrl-C): rank 0 has reported
            os._exit(code)
        click.echo(f"[rank {rank}] {message}", err=True)
    elif show is not None:
        show()
    else:
        click.echo(message, err=True)
    sys.exit(code)


@contextlib.contextmanager
def _signals_as_interrupt(seen: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM (kill, a batch scheduler) raise KeyboardInterrupt while the block runs, so that
    ``finally`` clauses run and temporary files are removed; each signal is appended to ``seen``.
    (Training loops install their own handler: the first signal there ends the step and saves.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes are printed as one line, without a traceback; after Ctrl-C or
    SIGTERM, whatever the interrupted code raised (an import cut short, say) is reported as the interruption."""
    seen: list[int] = []
    try:
        with _signals_as_interrupt(seen):
            _dispatch(argv, seen)
    except Exception:
        if not seen:
            raise
        click.echo("Interrupted.", err=True)
        sys.exit(128 + seen[0])


def _error_being_handled(exc: BaseException) -> BaseException | None:
    """The user error or training interruption that was on its way out when ``exc`` (an interrupt) came,
    if any: torchrun stops the other processes of a job with SIGTERM when one fails, and that signal can land
    while a process reports its own error (another process ended); a second Ctrl-C can land while training
    reports the first. That message is the one to show."""
    from ..training.outcomes import TrainingInterrupted

    seen: set[int] = set()
    link: BaseException | None = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen:
        if isinstance(link, (UserError, TrainingInterrupted)):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _report_pending(exc: BaseException, seen: list[int]) -> None:
    """Show the message that an interrupt cut short (see :func:`_error_being_handled`) and exit, if any."""
    pending = _error_being_handled(exc)
    if isinstance(pending, UserError):
        _fail(f"Error: {user_message(pending)}", 2)
    if pending is not None:
        click.echo(str(pending), err=True)
        sys.exit(128 + (getattr(pending, "signum", None) or (seen[0] if seen else signal.SIGINT)))


def _dispatch(argv: list[str] | None, seen: list[int]) -> None:
    try:
        cli.main(args=argv, prog_name="attngan", standalone_mode=False)
    except SystemExit as exc:  # a command's own "interrupted" exit: 128 + the signal that came
        if exc.code == 130 and seen:
            sys.exit(128 + seen[0])
        raise
    except click.exceptions.Abort as exc:
        _report_pending(exc, seen)
        click.echo("Aborted.", err=True)
        sys.exit(128 + seen[0] if seen else 130)
    except click.ClickException as exc:
        _fail(f"Error: {exc.format_message()}", exc.exit_code, exc.show)
    except UserError as exc:
        _fail(f"Error: {user_message(exc)}", 2)
    except OSError as exc:  # the file system refused: a path the user chose, a full disk, a size limit
        _fail(f"Error: {_os_error_message(exc)}", 1)
    except KeyboardInterrupt as exc:
        _report_pending(exc, seen)
        click.echo("Interrupted.", err=True)
        sys.exit(128 + seen[0] if seen else 130)
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc) or "Original Traceback" in str(exc):
            raise
        # A worker killed from outside (torch: "... is killed by signal: Bus error", "exited unexpectedly"):
        # mostly a full /dev/shm in a container. Checkpoints written so far are intact.
        click.echo(
            f"Error: {str(exc).splitlines()[0]}\nA DataLoader worker died; in a container this is mostly a full "
            "/dev/shm: give it more (docker run --shm-size=8g) or use fewer workers (--set data.workers=0). "
            "A training run continues from its last checkpoint with --resume RUN_FOLDER.",
            err=True,
        )
        sys.exit(1)


_OS_ERROR_HINTS = {
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOSPC: "free some disk space or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder",
    errno.EFBIG: "the file is larger than this process may write (see `ulimit -f`)",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EEXIST: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.ENOENT: "check the path",
}


def _os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_ERROR_HINTS.get(exc.errno or -1)
    return f"{what}{where}" + (f"; {hint}" if hint else "")
