"""The pipeline's stages, shared by every family (:mod:`edgecompress.families`): data, teacher
(``finetune`` in image runs), distill, prune, export, bench and report; the training and export
stages run the family's steps (:mod:`~edgecompress.stages.teacher`,
:mod:`~edgecompress.stages.student`, :mod:`~edgecompress.stages.export`). The image family's
own: its qat stage, and its steps (finetune.py, distill.py, prune.py, image_export.py)."""
