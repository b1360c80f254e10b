"""Structured channel pruning on torch-pruning's dependency graph (DepGraph).

The package keeps the three concerns apart, as Torch-Pruning itself does: importance scoring
(:mod:`~edgecompress.prune.importance`), the per-group channel plan that meets a ratio or a
MACs/params budget (:mod:`~edgecompress.prune.budget`), and the graph work of finding groups
and removing channels (:mod:`~edgecompress.prune.graph`). :mod:`~edgecompress.prune.artifact`
saves the result as a ``torch.export`` program that reloads without the model's Python class.

``torch_pruning`` is imported only inside these modules (the ``prune`` extra), never by
``import edgecompress``.
"""
