"""What the text stages share: the recipe, the run directory, the texts and their tokenization.

Subclasses the image pipeline's :class:`~edgecompress.stages.base.Context` so the same
:class:`~edgecompress.pipeline.Pipeline` machinery (manifests, hashes, resume) runs text stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.stages.base import Context
from edgecompress.text.data import Encoded, TextBundle, encode, load_text_dataset


class TextContext(Context):
    """Context with a text dataset and, once the teacher exists, its tokenizer."""

    def __init__(self, recipe: Any, run_dir: Path, dist_info: Any) -> None:
        super().__init__(recipe, run_dir, dist_info)
        self._tokenizer = None
        self._encoded: dict[str, Encoded] = {}

    @property
    def bundle(self) -> TextBundle:  # type: ignore[override]
        """The labelled texts, loaded and split once per process."""
        if self._bundle is None:
            self._bundle = load_text_dataset(self.recipe.data, self.recipe.seed)
        return self._bundle

    @property
    def teacher_dir(self) -> Path:
        """The teacher as trained/adopted by the teacher stage (an HF directory)."""
        return self.run_dir / "teacher" / "model"

    def final_student_dir(self) -> Path:
        """The pruned student when pruning is on, else the distilled one."""
        return self.run_dir / ("prune" if self.recipe.prune.enabled else "distill") / "model"

    @property
    def tokenizer(self):
        """The run's tokenizer (the teacher's; the student shares it)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.teacher_dir,
                                                            local_files_only=True)
        return self._tokenizer

    def set_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` (the teacher stage's, before it is saved)."""
        self._tokenizer, self._encoded = tokenizer, {}

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def encoded(self, split: str) -> Encoded:
        """``train``/``val``/``test`` tokenized with the run's tokenizer (cached)."""
        if split not in self._encoded:
            self._encoded[split] = encode(self.tokenizer, getattr(self.bundle, split),
                                          self.recipe.data.max_length)
        return self._encoded[split]
