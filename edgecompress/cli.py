"""Command line: thin commands that parse options, load the recipe and call one library function.

Heavy imports (torch, onnx) happen inside the commands so ``edgecompress --help`` stays fast and
works with only the core installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import click

from edgecompress import __version__
from edgecompress.errors import ConfigError, EdgeCompressError, RunDirError
from edgecompress.report import print_report_and_verdict

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


@contextlib.contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """Turn an OSError on a path inside ``out`` (read-only, /proc, full disk) into exit 2 naming
    the path, instead of a traceback."""
    try:
        yield
    except OSError as err:
        name = err.filename
        if not name or not Path(os.path.abspath(name)).is_relative_to(os.path.abspath(out)):
            raise
        raise RunDirError(f"--out {out}: cannot write {name}: {err.strerror or err}") from None


def _run_recipe(recipe, out: Path, force: str | None, overwrite: bool) -> int:
    from edgecompress.api import run_recipe

    with _writing_into(out):
        run_recipe(recipe, out, force=force, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    return print_report_and_verdict(out)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecompress")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(quiet: bool, verbose: bool) -> None:
    """Compress a PyTorch model: teacher -> distilled student -> engines -> report and gate.

    Exit codes: 0 success, 1 gate failed (report written), 2 bad input, 3 a required runtime is
    missing, 4 internal error (a bug: please report it), 5 an exported model or engine disagrees
    numerically with its PyTorch model (parity).
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
    """Run RECIPE (YAML, any task) into the run directory; exit 1 if the gate fails."""
    from edgecompress.families import load_any_recipe

    sys.exit(_run_recipe(load_any_recipe(recipe_path), out, force, overwrite))


@cli.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Run directory.")
@_force
@_overwrite
def demo(out: Path, force: str | None, overwrite: bool) -> None:
    """The embedded default: digits teacher -> distilled, pruned, INT8 student -> ONNX Runtime
    and TFLite engines -> report and gate."""
    from edgecompress.recipe import load_recipe

    with resources.as_file(resources.files("edgecompress") / "recipes" / DEMO_RECIPE) as path:
        recipe = load_recipe(path)
    sys.exit(_run_recipe(recipe, out, force, overwrite))


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
def validate(recipe_path: Path) -> None:
    """Check RECIPE (any task) and print it resolved, with every default filled in."""
    import yaml

    from edgecompress.families import family_for, load_any_recipe

    recipe = load_any_recipe(recipe_path)
    family = family_for(recipe)
    family.check_sources(recipe)  # a missing package is exit 3 here, before any training
    click.echo(yaml.safe_dump(family.recipe_to_dict(recipe), sort_keys=False))


@cli.command()
@click.option("--task", "task", default="image-classification", show_default=True,
              help="The task whose recipe schema to print (see 'edgecompress tasks').")
def schema(task: str) -> None:
    """Print a task's recipe schema: every key with its default and description (YAML)."""
    from edgecompress.families import get_family
    from edgecompress.schema_doc import schema_text

    click.echo(schema_text(get_family(task).recipe_model(), task), nl=False)


@cli.command()
def tasks() -> None:
    """List the model families a recipe's ``task`` can name."""
    from edgecompress.families import get_family
    from edgecompress.families import tasks as known

    for task in known():
        click.echo(f"{task}: {get_family(task).summary}")


_GATE_OPTIONS = (
    ("--max-accuracy-drop", "max_accuracy_drop", float, "Max accuracy drop vs the teacher (pp)."),
    ("--max-accuracy-drop-pct", "max_accuracy_drop_pct", float,
     "Max accuracy drop relative to the teacher (%)."),
    ("--max-latency-p50-ms", "max_latency_p50_ms", float, "Max p50 latency (ms)."),
    ("--max-latency-p90-ms", "max_latency_p90_ms", float, "Max p90 latency (ms)."),
    ("--min-speedup", "min_speedup", float, "Min speedup vs the teacher (x)."),
    ("--min-int8-speedup", "min_int8_speedup", float,
     "Min speedup of an int8 target over its FP32 twin, same runtime, same rounds (x)."),
    ("--max-size-bytes", "max_size_bytes", int, "Max engine artifact size (bytes)."),
)


def _gate_options(fn):
    """Threshold options shared by ``gate`` and ``bench``; they override every target's."""
    fn = click.option("--no-fp32-fallback", "no_fp32_fallback", is_flag=True, default=None,
                      help="Fail targets whose engine reports FP32 fallback nodes.")(fn)
    for flag, dest, kind, text in reversed(_GATE_OPTIONS):
        fn = click.option(flag, dest, type=click.FloatRange(min=0) if kind is float
                          else click.IntRange(min=1), default=None, help=text)(fn)
    return fn


def _load_checked_report(path: Path) -> dict:
    """A report.json whose structure (``load_report``) and values (numbers, ranges) are checked,
    so that ``gate`` and ``compare`` never compute with a string or a NaN."""
    from edgecompress.gate import check_report_values
    from edgecompress.report import load_report

    report = load_report(path)
    check_report_values(report, str(path))
    return report


def _overrides(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _echo_gate(gate: dict) -> None:
    checks = gate.get("checks") or []
    judged = [c for c in checks if c["outcome"] != "skipped"]
    click.echo(f"gate: {'PASSED' if gate['passed'] else 'FAILED'} "
               f"({len(judged)} checks judged, {len(checks) - len(judged)} skipped)")
    for c in checks:
        if c["outcome"] == "skipped":
            click.echo(f"  skipped: {c['message']}")
    for violation in gate["violations"]:
        click.echo(f"  violation: {violation}", err=True)


@cli.command()
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path))
@_gate_options
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None,
              help="Where to write JUnit XML (default: junit.xml next to REPORT).")
def gate(report_path: Path, junit_path: Path | None, **thresholds) -> None:
    """Re-judge a saved report.json with its thresholds plus these; exit 1 on any violation.

    Every violation is printed; junit.xml (one testcase per target and check) is written next to
    the report. The report itself is not modified.
    """
    from edgecompress.gate import rejudge
    from edgecompress.junit import write_junit

    junit_path = junit_path or report_path.parent / "junit.xml"
    if junit_path.is_dir():
        raise ConfigError(f"--junit {junit_path}: is a directory; give the XML file's path")
    verdict = rejudge(_load_checked_report(report_path), _overrides(thresholds))
    try:
        junit = write_junit(verdict, junit_path)
    except OSError as err:
        raise ConfigError(f"--junit {junit_path}: cannot be written: "
                          f"{err.strerror or err}") from None
    _echo_gate(verdict)
    click.echo(f"junit: {junit}")
    sys.exit(0 if verdict["passed"] else 1)


@cli.command()
@click.argument("old_path", metavar="OLD", type=click.Path(path_type=Path))
@click.argument("new_path", metavar="NEW", type=click.Path(path_type=Path))
@click.option("--accuracy-tolerance-pp", type=click.FloatRange(min=0), default=0.5,
              show_default=True, help="Accuracy may drop this much (pp) before it counts.")
@click.option("--latency-tolerance-pct", type=click.FloatRange(min=0), default=10.0,
              show_default=True, help="p50/p90 may grow this much (%) before it counts.")
def compare(old_path: Path, new_path: Path, accuracy_tolerance_pp: float,
            latency_tolerance_pct: float) -> None:
    """Per-target deltas from OLD to NEW report.json; exit 1 on a regression beyond tolerance."""
    from edgecompress.compare import compare_reports, format_comparison

    result = compare_reports(_load_checked_report(old_path), _load_checked_report(new_path),
                             accuracy_tolerance_pp=accuracy_tolerance_pp,
                             latency_tolerance_pct=latency_tolerance_pct)
    click.echo(format_comparison(result))
    sys.exit(1 if result.regressed else 0)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def targets(as_json: bool) -> None:
    """List the target profiles (targets/*.yaml) and whether each can run on this machine."""
    from edgecompress.targets import list_profiles, targets_dir

    rows = list_profiles()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"target profiles in {targets_dir()}:")
    click.echo(f"{'name':<20}{'backend':<13}{'precision':<10}{'device':<8}runs here")
    for r in rows:
        verdict = "yes" if r["runnable"] else "no: " + "; ".join(r["reasons"])
        click.echo(f"{r['name']:<20}{r.get('backend', '?'):<13}{r.get('precision', '?'):<10}"
                   f"{r.get('connection', '?'):<8}{verdict}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--target", "target", required=True, metavar="PROFILE",
              help="Target profile name (see `edgecompress targets`) or YAML path.")
@click.option("--data", "data", default=None, metavar="digits|FILE.npz",
              help="Score accuracy on this dataset's test split (default: latency only, on "
                   "random inputs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data split.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Directory for report.json, report.md, report.html, junit.xml.")
@click.option("--baseline", "baseline", type=click.Path(path_type=Path), default=None,
              metavar="MODEL",
              help="A second engine file (e.g. the FP32 teacher) timed in the same interleaved "
                   "rounds; it fills the report's teacher fields and speedup_vs_teacher.")
@_overwrite
@_gate_options
def bench(artifact: Path, target: str, data: str | None, seed: int, out: Path,
          baseline: Path | None, overwrite: bool, **thresholds) -> None:
    """Measure one engine file (ONNX) on a target profile; exit 1 if its budgets fail."""
    from edgecompress.bench.artifact import bench_artifact
    from edgecompress.errors import ConfigError
    from edgecompress.targets import load_profile

    for path, what in ((artifact, "artifact"), (baseline, "--baseline")):
        if path is None:
            continue
        if what == "--baseline" and not path.is_file():
            raise ConfigError(f"--baseline {path}: file not found")
        if path.suffix == ".onnx":
            from edgecompress.inputs import check_onnx_file

            check_onnx_file(path)  # parses; external data present and inside its folder
    profile = load_profile(target)
    if baseline is not None and profile.connection.kind == "ssh":
        raise ConfigError(f"--baseline: target profile {profile.name!r} is measured on a remote "
                          "board, where a baseline is not supported; bench the baseline file "
                          "as its own run")
    with _writing_into(out):
        if profile.connection.kind == "ssh":  # measured on the board, never on this machine
            from edgecompress.remote.artifact import bench_artifact_remote

            report = bench_artifact_remote(artifact, profile, out, data=data, seed=seed,
                                           overwrite=overwrite,
                                           gate_overrides=_overrides(thresholds))
        else:
            report = bench_artifact(artifact, profile, out, data=data, seed=seed,
                                    overwrite=overwrite, gate_overrides=_overrides(thresholds),
                                    baseline=baseline)
    click.echo((out / "report.md").read_text())
    click.echo(f"report: {out / 'report.json'}")
    _echo_gate(report["gate"])
    sys.exit(0 if report["gate"]["passed"] else 1)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--for", "family", type=click.Choice(["tensorrt"]), default="tensorrt",
              show_default=True, help="Runtime whose Q/DQ rules to check.")
@click.option("--require-qdq", is_flag=True, help="A model without Q/DQ nodes is a finding.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def lint(model: Path, family: str, require_qdq: bool, as_json: bool) -> None:
    """Check a Q/DQ ONNX MODEL against TensorRT's rules on CPU; exit 2 on any finding."""
    from edgecompress.inputs import check_onnx_file
    from edgecompress.quant.trt_lint import lint_tensorrt

    check_onnx_file(model)  # exists, parses, external data present and inside its folder
    result = lint_tensorrt(model, require_qdq=require_qdq)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{model}: opset {result.opset}, {result.qdq_nodes} Q/DQ nodes, "
                   f"{'PASSED' if result.passed else f'{len(result.findings)} finding(s)'}")
        for finding in result.findings:
            click.echo(f"  {finding}")
    sys.exit(0 if result.passed else 2)


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
