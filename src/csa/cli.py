"""The ``csa`` command line: each command is a thin shell over the library.

Exit codes (ARCHITECTURE.md): 0 done, 1 failed at run time, 2 bad input, 130 interrupted.
A :class:`~csa.errors.CsaError` is printed as one line on stderr, without a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import typer

from .errors import EXIT_INTERRUPTED, EXIT_USER, CsaError

app = typer.Typer(
    name="csa",
    help="Coherent Semantic Attention image inpainting: inpaint, train, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int = EXIT_USER) -> None:
    """Print one error line and exit (for checks made in the CLI itself)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# --- commands -------------------------------------------------------------------------
# Each command lives below; keep them thin: parse options, call the library, print.


@app.command()
def convert(
    official_g: Path = typer.Option(..., "--official-g", help="the release's <epoch>_net_G.pth (refine net)"),
    official_p: Path = typer.Option(..., "--official-p", help="the release's <epoch>_net_P.pth (rough net)"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the .safetensors model"),
) -> None:
    """Convert checkpoints of the official release to one safetensors model (CSA mode 'official')."""
    from .checkpoints import convert_official, save_generator

    model = convert_official(official_g, official_p)
    save_generator(model, output)
    typer.echo(f"wrote {output} ({sum(p.numel() for p in model.parameters()):,} parameters, csa_mode=official)")


masks_app = typer.Typer(help="Generate seeded masks and summarise mask folders.", no_args_is_help=True)


@masks_app.command("generate")
def masks_generate(
    outdir: Path = typer.Argument(..., help="folder to write (created; must be empty unless --force)"),
    kind: str = typer.Option(..., "--kind", help="centre, centre:N, rect, rect:N, freeform, lama-thin, lama-medium, lama-thick; + for unions"),
    count: int = typer.Option(..., "--count", help="how many masks"),
    size: int = typer.Option(256, "--size", help="mask side in pixels"),
    seed: int = typer.Option(0, "--seed", help="mask i is drawn from the numpy seed sequence (seed, i)"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty folder"),
) -> None:
    """Write COUNT masks as PNGs (white = hole) and manifest.csv; one seed gives identical files."""
    from .masks import write_mask_folder

    stats = write_mask_folder(outdir, kind, count, size, seed, force=force, progress=True)
    typer.echo(f"wrote {stats.total} masks ({kind}, {size}x{size}, seed {seed}) and manifest.csv to {outdir}")
    typer.echo(stats.format())


@masks_app.command("stats")
def masks_stats(
    directory: Path = typer.Argument(..., help="a folder of mask images"),
    polarity: str = typer.Option("white-hole", "--polarity", help="white-hole, black-hole or auto (detect once per folder)"),
) -> None:
    """Count the masks of a folder per hole-ratio bucket (0.01-0.1, ..., 0.5-0.6, other)."""
    from .masks import folder_stats

    stats = folder_stats(directory, polarity, progress=True)
    typer.echo(f"{directory}: {stats.total} masks")
    typer.echo(stats.format())
    if stats.unreadable:
        raise typer.Exit(EXIT_USER)


app.add_typer(masks_app, name="masks")


# --- entry point ----------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: map errors to the project's exit codes."""
    try:
        code = app(args=argv, standalone_mode=False)
    except CsaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_USER)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
