"""The pipeline's stages. The image family's: data, finetune, distill, prune, qat, export, bench,
report; the report stage is shared by every family (see :mod:`edgecompress.families`)."""
