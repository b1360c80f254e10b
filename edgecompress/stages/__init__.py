"""The pipeline's stages. Shared by every family (:mod:`edgecompress.families`): data,
teacher (``finetune`` in image runs), distill, prune, bench and report; the training stages
run the family's steps (:mod:`~edgecompress.stages.teacher`, :mod:`~edgecompress.stages.student`).
The image family's own: qat and export (and its steps: finetune.py, distill.py, prune.py)."""
