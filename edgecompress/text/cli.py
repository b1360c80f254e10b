"""What ``edgecompress run`` / ``validate`` call for a ``task: text-classification`` recipe.

The image recipe forbids unknown keys, so the CLI peeks at ``task`` first and hands text
recipes here; everything else (exit codes, report.md on stdout) behaves like an image run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edgecompress.text.recipe import is_text_recipe


def is_text_recipe_file(path: Path) -> bool:
    """Whether ``path`` is a YAML mapping with ``task: text-classification``.

    Unreadable or invalid files answer False: the image recipe loader then reports them.
    """
    from edgecompress.errors import ConfigError
    from edgecompress.inputs import load_user_yaml

    try:
        return is_text_recipe(load_user_yaml(path, "recipe file"))
    except ConfigError:
        return False


def run_text(path: Path, out: Path, force: str | None, overwrite: bool) -> int:
    """Run the text pipeline; print report.md; 1 if the gate failed, else 0."""
    from edgecompress.report import print_report_and_verdict
    from edgecompress.text.pipeline import TextPipeline
    from edgecompress.text.recipe import load_text_recipe

    TextPipeline(load_text_recipe(path), out).run(force=force, overwrite=overwrite)
    return print_report_and_verdict(out)


def validate_text(path: Path) -> str:
    """The resolved text recipe as YAML."""
    from edgecompress.text.recipe import load_text_recipe, text_recipe_to_dict

    return yaml.safe_dump(text_recipe_to_dict(load_text_recipe(path)), sort_keys=False)
