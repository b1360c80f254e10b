"""``python -m edgecompress`` (used by ``torchrun -m edgecompress ...``)."""

from edgecompress.cli import main

main()
