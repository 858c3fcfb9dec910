"""The ``csa`` command line: each command is a thin shell over the library.

Exit codes (docs/conventions.md, 'Exit codes'): 0 done, 1 failed at run time, 2 bad input, 130 interrupted.
A :class:`~csa.errors.CsaError` is printed as one line on stderr, without a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import typer

from .errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USER, CsaError
from .extras import require

app = typer.Typer(
    name="csa",
    help="Coherent Semantic Attention image inpainting: inpaint, train, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"csa {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Coherent Semantic Attention image inpainting: inpaint, train, evaluate, serve."""


def fail(message: str, code: int = EXIT_USER) -> None:
    """Print one error line and exit (for checks made in the CLI itself)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that another program holds, before the model is served on it."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CsaError(f"port {port} on {host} is already in use: pick another with --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CsaError(f"{host} is not an address of this machine: use --host 127.0.0.1") from None
            raise


# --- commands -------------------------------------------------------------------------
# Each command lives below; keep them thin: parse options, call the library, print.

WEIGHTS_HELP = ("a model file instead of the bundled one: a .safetensors generator, or a `csa export` file "
                "(.onnx runs in onnxruntime; .ts in TorchScript, which runs the file's code: trusted files only)")


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


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-output"), "-o", "--out-dir", help="where to write the pictures"),
    weights: Optional[Path] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
) -> None:
    """Inpaint the bundled sample photo with the bundled model and write a side-by-side picture."""
    from .demo import run_demo

    result, sheet = run_demo(out_dir, weights, device)
    typer.echo(f"result:       {result}")
    typer.echo(f"side by side: {sheet}  (input with hole | csa result | original)")


@app.command()
def evaluate(
    images: Path = typer.Option(..., "--images", help="folder of ground-truth images"),
    masks: str = typer.Option(..., "--masks", help="a mask kind (e.g. centre:128, freeform) or a folder of masks"),
    method: list[str] = typer.Option(
        ..., "--method", help="telea, ns, biharmonic, patchmatch, smooth, csa (bundled model) or a model file (.safetensors, "
                     ".onnx, .ts: see --weights of csa inpaint); repeat it"
    ),
    out: Path = typer.Option(..., "--out", help="folder for summary.json, per_image.csv, results.md, charts/, grid.png"),
    size: int = typer.Option(256, "--size", help="images are brought to size x size"),
    seed: int = typer.Option(0, "--seed", help="seed of the mask assignment / generation"),
    limit: Optional[int] = typer.Option(None, "--limit", help="use only the first N pairs"),
    grid: int = typer.Option(4, "--grid", help="rows (images) in grid.png; 0 for none"),
    device: str = typer.Option("cpu", "--device", help="torch device for csa models and FID/LPIPS"),
    lpips: str = typer.Option("alex", "--lpips", help="LPIPS network: alex, vgg or off (weights: csa weights fetch lpips)"),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="FID and KID (weights: csa weights fetch inception)"),
    fid_model: Optional[Path] = typer.Option(
        None, "--fid-model", help="your own Inception TorchScript file (e.g. NVIDIA's inception-2015-12-05.pt) instead "
                                  "of the fetched one; loading it runs code from it: trusted files only"),
    lpips_net: Optional[Path] = typer.Option(None, "--lpips-net", help="torchvision AlexNet/VGG16 weights for LPIPS"),
    lpips_lin: Optional[Path] = typer.Option(None, "--lpips-lin", help="LPIPS v0.1 linear heads (alex.pth / vgg.pth)"),
) -> None:
    """Compare inpainting methods on the same image-and-mask pairs; write tables, charts and a grid."""
    require("eval", "csa evaluate", ("skimage", "matplotlib"))
    from .evaluate import evaluate as run_evaluation
    from .evaluate import markdown_table

    summary = run_evaluation(
        images, masks, method, out, size=size, seed=seed, limit=limit, grid=grid, device=device,
        lpips=lpips, fid=fid, fid_model=fid_model, lpips_net=lpips_net, lpips_lin=lpips_lin,
    )
    typer.echo(markdown_table(summary))
    typer.echo("")
    for name, sec in summary["seconds_per_image"].items():
        typer.echo(f"{name}: {sec:.4f} s/image")
    for name, why in summary["skipped"].items():
        typer.echo(f"skipped {name}: {why}")
    typer.echo(f"wrote {out}/summary.json, per_image.csv, results.md, charts/, grid.png ({summary['n_images']} images)")


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


weights_app = typer.Typer(help="Fetch, check and list the weight files the losses and metrics use.", no_args_is_help=True)


@weights_app.command("fetch")
def weights_fetch(
    names: list[str] = typer.Argument(..., help="what to fetch: vgg16, lpips, inception (repeat for several)"),
    force: bool = typer.Option(False, "--force", help="fetch and convert again even when the cached file is there"),
) -> None:
    """Download (hash-checked), convert and cache weight files; a cached file is reused."""
    from .weights_fetch import fetch

    for name in names:
        for path in fetch(name, force=force, log=lambda line: typer.echo(line, err=True)):
            typer.echo(f"{name}: {path}")


@weights_app.command("list")
def weights_list() -> None:
    """Name each known weight file, what it is for, and where it is cached (or how to fetch it)."""
    from . import weights

    for name in weights.NAMES:
        path = weights.cached_path(name)
        where = str(path) if path is not None else f"not fetched: {weights.fetch_command(name)}"
        typer.echo(f"{name:10s} {weights.describe(name)}\n{'':10s} {where}")


app.add_typer(weights_app, name="weights")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; 0.0.0.0 opens it to the network"),
    port: int = typer.Option(8080, "--port", help="TCP port"),
    weights: Optional[Path] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", help="largest request body accepted (413 above)"),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", help="largest image accepted, in pixels (413 above)"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: debug, info, warning, error"),
) -> None:
    """Serve the brush page at / and the REST API at /api/v1 (docs at /docs), one model for all requests."""
    require("serve", "csa serve")
    import logging

    import uvicorn

    from .server import create_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    check_port_free(host, port)
    # Load the model before binding, so a bad --weights fails with exit 2 and one line.
    api = create_app(weights, device=device, max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach this machine can use the server", err=True)
    typer.echo(f"csa serve: open http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}/ (API docs at /docs)")
    try:
        uvicorn.run(api, host=host, port=port, log_level=log_level)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start: a run-time failure here
        if exc.code not in (None, 0):
            raise typer.Exit(EXIT_RUNTIME) from None


def parse_resume_args(extra: Sequence[str]) -> Optional[str]:
    """``--resume [PATH]`` from the train command's extra arguments (typer cannot say 'optional value').

    Returns None (no --resume), "" (--resume alone) or the path.
    """
    args = list(extra)
    resume: Optional[str] = None
    while args:
        a = args.pop(0)
        if a == "--resume":
            resume = args.pop(0) if args and not args[0].startswith("-") else ""
        elif a.startswith("--resume="):
            resume = a.split("=", 1)[1]
        else:
            raise CsaError(f"unexpected argument {a!r}: see `csa train --help`")
    return resume


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="training config YAML (e.g. configs/csa-paper.yaml); "
                                          "optional with --resume (the run's own config is used)"),
    data: Optional[Path] = typer.Option(None, "--data", help="training images (sets data.root)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder: checkpoints, config.yaml, scalars.jsonl, tb/"),
    overrides: list[str] = typer.Option([], "--set", help="override a config value, e.g. --set train.max_steps=100; repeat it"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm progress bar on stderr"),
) -> None:
    """Train the CSA model from a config file; SIGINT / SIGTERM save a checkpoint and exit 130.

    Continue a run with --resume [RUN_DIR | CHECKPOINT] (alone: the run in --out).
    Several processes: torchrun --nproc_per_node N -m csa train ...
    """
    require("train", "csa train", ("tensorboard",))
    from .train import NonFiniteLoss, run_training

    resume = parse_resume_args(ctx.args)
    try:
        code = run_training(config, data, out, resume=resume, overrides=overrides, progress=progress)
    except NonFiniteLoss as exc:
        fail(str(exc), EXIT_RUNTIME)
    raise typer.Exit(code)


@app.command()
def export(
    source: Optional[Path] = typer.Argument(
        None, help="a run folder (its latest checkpoint), a checkpoint folder or a .safetensors generator "
                   "(default: the bundled model)"),
    output: Path = typer.Option(..., "-o", "--output", help="the file to write: .safetensors, .onnx or .ts"),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="onnx, torchscript or safetensors (default: from the suffix of -o)"),
    half: bool = typer.Option(False, "--half", help="store float16 weights (.safetensors only: half the size; "
                                                    "loaded back as float32)"),
) -> None:
    """Write a model for inference: its generator alone (.safetensors), or an ONNX / TorchScript export (float32)."""
    from .export import export_source

    report = export_source(source, output, fmt, half=half)
    typer.echo(f"wrote {report.output} ({report.format}) from {report.source} ({report.parameters:,} parameters, "
               f"{report.size / 1e6:.1f} MB{', float16' if half else ''})")


@app.command()
def inpaint(
    image: Path = typer.Argument(..., help="an image file, or a folder of images (folder mode)"),
    mask: Optional[Path] = typer.Option(
        None, "--mask", "-m", help="mask file (white = hole); in folder mode a folder of masks matched by file stem, or one file for all"),
    output: Path = typer.Option(..., "-o", "--output", help="output file (.png keeps every known pixel exact); in folder mode a folder"),
    weights: Optional[Path] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto"),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="resize, crop or native (default: resize up to the model's size, crop above)"),
    method: str = typer.Option("csa", "--method", help="csa (the model) or a classical baseline: telea, ns, biharmonic, patchmatch, smooth"),
    invert: bool = typer.Option(False, "--invert", help="black = hole instead of white"),
    mask_from_alpha: bool = typer.Option(
        False, "--mask-from-alpha", help="transparent = hole (the mask's alpha; without --mask, the image's own)"),
    resize_mask: bool = typer.Option(False, "--resize-mask", help="scale a mask of another size to the image's size"),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="refuse larger images (default 50,000,000)"),
    explain: Optional[Path] = typer.Option(
        None, "--explain", help="MAP.png: also write where each filled region came from (MAP.png picture, MAP.npz "
        "arrays); in folder mode a folder (one pair per image). --method csa only"),
) -> None:
    """Fill the hole of a photo (or of every photo in a folder); known pixels are kept exactly."""
    import warnings

    from . import folder
    from .inference import InpaintWarning
    from .inputs import InpaintOptions

    options = InpaintOptions(invert=invert, mask_from_alpha=mask_from_alpha, resize_mask=resize_mask, strategy=strategy)
    where = dict(weights=weights, device=device, method=method, explain=explain)
    if max_pixels is not None:
        where["max_pixels"] = max_pixels
    if image.is_dir():
        if mask is None:
            fail("folder mode needs --mask: a folder of masks named like the images, or one mask file for all")
        report = folder.inpaint_folder(image, mask, output, options, progress=sys.stderr.isatty(), **where)
        typer.echo(report.summary())
        if report.failed:
            raise typer.Exit(EXIT_USER)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InpaintWarning)
        result = folder.inpaint_path(image, mask, output, options, **where)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    width, height = result.size
    typer.echo(f"wrote {result.output} ({width}x{height}, {result.hole_pixels:,} hole pixels, "
               f"{result.strategy}, {result.seconds:.1f} s)")
    if explain is not None:
        typer.echo(f"wrote {explain} and {explain.with_suffix('.npz')} (where each filled region came from)")


# --- entry point ----------------------------------------------------------------------


def _context_of(argv: Optional[list[str]]):
    """A context for the (sub)command that ``argv`` names, for errors raised without one."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    ctx = command.make_context("csa", [], resilient_parsing=True)
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            continue
        command = sub
        ctx = command.make_context(arg, [], parent=ctx, resilient_parsing=True)
    return ctx


def _usage_error(exc: typer.TyperException, argv: Optional[list[str]]) -> int:
    """Print a command-line mistake as the usage line and one ``error:`` line; the exit code.

    typer's parse errors (an unknown option, a missing value or argument, a bad number,
    an unknown command) all derive from ``typer.TyperException`` and carry the context of
    the command they belong to.
    """
    ctx = getattr(exc, "ctx", None) or _context_of(argv)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        typer.echo(ctx.get_help())  # `csa` or `csa masks` alone: the help is the answer
        return 0
    if ctx is not None:
        typer.echo(ctx.get_usage(), err=True)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(f"error: {exc.format_message().rstrip('.')}{hint}", err=True)
    return EXIT_USER


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: map errors to the project's exit codes (0, 1, 2, 130)."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="csa")
    except CsaError as exc:
        typer.echo(f"error: {exc.render('cli')}", err=True)
        code = EXIT_USER
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:
        code = _usage_error(exc, argv)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
