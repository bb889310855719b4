"""The ``attngan`` command line: a thin click layer over the library.

Subcommands live in their own modules and are imported only when used, so ``attngan --help`` is fast
and an optional dependency of one command (e.g. FastAPI for ``serve``) never breaks the others.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import UserError, user_message

# command name -> "module:attribute" (relative to attngan.cli)
COMMANDS = {
    "demo": ("train", "demo", "Run the whole pipeline on the built-in shapes dataset (CPU, minutes)."),
    "pretrain-damsm": ("train", "pretrain_damsm", "Pre-train the DAMSM text and image encoders (Eq. 7-14)."),
    "train": ("train", "train", "Train the AttnGAN generator and discriminators (Eq. 1-5)."),
    "sample": ("sample", "sample", "Draw images and attention maps from sentences."),
    "evaluate": ("evaluate", "evaluate", "R-precision, Inception Score, FID, attribute accuracy of a model."),
    "convert": ("convert", "convert", "Convert the original release's .pth files to the native format and back."),
    "data": ("data", "data", "Inspect and validate datasets (attngan data check)."),
    "serve": ("serve", "serve", "Serve an HTTP API and a web page that draw images from sentences."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, help_text = COMMANDS[name]
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            reason = str(exc)

            @click.command(name=name, help=f"{help_text} (unavailable: {reason})")
            def unavailable() -> None:
                raise click.ClickException(f"'attngan {name}' is not available in this installation: {reason}")

            return unavailable


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="attngan")
def cli() -> None:
    """AttnGAN: fine-grained text-to-image generation with attentional GANs (Xu et al., CVPR 2018).

    Start with `attngan demo`, which trains a small model on the built-in shapes dataset on a CPU.
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes are printed as one line, without a traceback."""
    try:
        cli.main(args=argv, prog_name="attngan", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"Error: {user_message(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
