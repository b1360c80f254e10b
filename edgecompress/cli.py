"""Command line: thin commands that parse options, load the recipe and call one library function.

Heavy imports (torch, onnx) happen inside the commands so ``edgecompress --help`` stays fast and
works with only the core installed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import click

from edgecompress import __version__
from edgecompress.errors import EdgeCompressError

EXIT_INTERNAL = 4
DEMO_RECIPE = "digits.yaml"


def _setup_logging(quiet: bool, verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if quiet or rank != 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _run_recipe(recipe, out: Path, force: str | None, overwrite: bool) -> int:
    from edgecompress.pipeline import Pipeline

    Pipeline(recipe, out).run(force=force, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    report = json.loads((out / "report.json").read_text())
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.json'}")
    if not report["gate"]["passed"]:
        click.echo("gate FAILED:\n  " + "\n  ".join(report["gate"]["violations"]), err=True)
        return 1
    return 0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecompress")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(quiet: bool, verbose: bool) -> None:
    """Compress a PyTorch model: teacher -> distilled student -> engines -> report and gate.

    Exit codes: 0 success, 1 gate failed (report written), 2 bad input, 3 a required runtime is
    missing, 4 internal error (a bug: please report it).
    """
    _setup_logging(quiet, verbose)


_out = click.option("--out", "out", type=click.Path(path_type=Path), required=True,
                    help="Run directory (created; reused to resume an interrupted run).")
_force = click.option("--force", "force", metavar="STAGE", default=None,
                      help="Rerun this stage and all later ones even if up to date.")
_overwrite = click.option("--overwrite", is_flag=True,
                          help="Replace a different run's directory instead of refusing.")


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@_out
@_force
@_overwrite
def run(recipe_path: Path, out: Path, force: str | None, overwrite: bool) -> None:
    """Run RECIPE (YAML) into the run directory; exit 1 if the gate fails."""
    from edgecompress.recipe import load_recipe

    sys.exit(_run_recipe(load_recipe(recipe_path), out, force, overwrite))


@cli.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Run directory.")
@_force
@_overwrite
def demo(out: Path, force: str | None, overwrite: bool) -> None:
    """The embedded default: digits teacher -> 5x smaller distilled student -> ONNX Runtime."""
    from edgecompress.recipe import load_recipe

    with resources.as_file(resources.files("edgecompress") / "recipes" / DEMO_RECIPE) as path:
        recipe = load_recipe(path)
    sys.exit(_run_recipe(recipe, out, force, overwrite))


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
def validate(recipe_path: Path) -> None:
    """Check RECIPE and print it resolved, with every default filled in."""
    import yaml

    from edgecompress.recipe import load_recipe, recipe_to_dict

    click.echo(yaml.safe_dump(recipe_to_dict(load_recipe(recipe_path)), sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps edgecompress errors to their exit codes."""
    try:
        cli.main(args=argv, prog_name="edgecompress", standalone_mode=False)
    except EdgeCompressError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - a bug: show the traceback, exit with a distinct code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
