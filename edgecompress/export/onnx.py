"""PyTorch -> ONNX export (dynamo exporter) and the parity check that guards it.

Every later stage (INT8, TFLite, TensorRT) starts from this file, so it must be one
self-contained, checker-valid ``.onnx`` whose outputs match PyTorch; ``check_parity`` proves the
latter before anything downstream trusts it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, DataError, ModelError, ParityError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

MIN_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLASS_PREFIX = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>")


def _require(module: str) -> ModuleType:
    """Import an optional ONNX dependency, naming the pip extra if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"ONNX export needs the {module!r} package ({exc}); "
            "install it with: pip install 'edgecompress[onnx]'"
        ) from exc


def _first_meaningful_line(exc: BaseException) -> str:
    """Pick the line of an exporter error that says what went wrong.

    The dynamo exporter wraps the real cause in a page of boilerplate ("This is step 1/3 ...");
    its "## Exception summary" section holds the useful line.
    """
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return _CLASS_PREFIX.sub(r"\1", after[0])
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Silence the exporter's prints, warnings and torch log chatter; keep them for debug logs.

    The dynamo exporter writes graph dumps straight to stderr and warns about optional packages
    (torchvision) through torch's loggers, which would bury the CLI's own output.
    """
    names = ["torch"] + [n for n in logging.root.manager.loggerDict if n.startswith("torch.")]
    saved = {name: logging.getLogger(name).level for name in names}
    buf = io.StringIO()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("always")
            yield buf
        for w in caught:
            logger.debug("exporter warning: %s", w.message)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if buf.getvalue().strip():
            logger.debug("exporter output:\n%s", buf.getvalue())


#: Per-node metadata kept in exported files: the PyTorch module path of each node (a short list
#: of names such as ``['', 'stage2', 'stage2.0', 'stage2.0.conv1', 'conv2d_3']``, nothing about
#: the build machine), so a parity failure can name the layer (:mod:`edgecompress.quant.
#: parity_probe`). Engines built from the file drop it too (``onnx_passes.strip_metadata``).
KEPT_NODE_METADATA = frozenset({"pkg.torch.onnx.name_scopes"})


def _strip_node(node: Any) -> None:
    kept = [(p.key, p.value) for p in node.metadata_props if p.key in KEPT_NODE_METADATA]
    del node.metadata_props[:]  # stack traces with this machine's source paths, fx dumps
    for key, value in kept:
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    node.doc_string = ""


def _strip_graph(graph: Any) -> None:
    """Drop doc strings and per-node metadata (but module paths) of ``graph`` and its
    subgraphs, in place."""
    graph.doc_string = ""
    for node in graph.node:
        _strip_node(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_graph(attr.g)
            for sub in attr.graphs:
                _strip_graph(sub)


def strip_build_details(model: Any) -> None:
    """Remove what the exporter records about the build machine, in place.

    The dynamo exporter stores a Python stack trace (absolute paths of the source files, the
    user name in a home directory) and the FX node text on every node; an engine shipped to a
    device or a customer should be the graph and the weights only. Kept: each node's module
    path (:data:`KEPT_NODE_METADATA`).
    """
    model.doc_string = ""
    _strip_graph(model.graph)
    for function in model.functions:
        function.doc_string = ""
        for node in function.node:
            _strip_node(node)
        del function.metadata_props[:]


def _embed_external_data(onnx: ModuleType, path: Path) -> None:
    """Fold any external-data sidecar back into ``path`` so the artifact is one file, and strip
    build details (:func:`strip_build_details`)."""
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    sidecars = {
        entry.value
        for t in proto.graph.initializer if uses_external_data(t)
        for entry in t.external_data if entry.key == "location"
    }
    if sidecars:
        proto = onnx.load(str(path))  # pulls the external tensors in
    strip_build_details(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    for name in sidecars:
        (path.parent / name).unlink(missing_ok=True)
    if sidecars:
        logger.debug("embedded external data %s into %s", sorted(sidecars), path.name)


def _export_to(model: nn.Module, sample: torch.Tensor, tmp: Path, opset: int,
               dynamic_shapes: tuple[dict[int, Any], ...] | None) -> None:
    """Run the dynamo exporter quietly, mapping its failures to ``ModelError``."""
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                model, (sample,), str(tmp), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes, external_data=False,
                verbose=False, report=False,
            )
    except Exception as exc:
        raise ModelError(
            f"cannot export {type(model).__name__} to ONNX: {_first_meaningful_line(exc)}"
        ) from exc


def export_onnx(model: nn.Module, sample: torch.Tensor, path: str | Path, *, opset: int = 18,
                dynamic_batch: bool = True, switch_mode: bool = True) -> Path:
    """Export ``model`` to a single self-contained, checker-valid ONNX file, atomically.

    Args:
        model: Classifier mapping a batch to logits; exported in eval mode (restored after).
        sample: Example input batch; only its shape/dtype matter.
        path: Destination ``.onnx`` file.
        opset: ONNX opset; at least 18 (the dynamo exporter's minimum that we support).
        dynamic_batch: Make dimension 0 symbolic so any batch size runs.
        switch_mode: Put the model in eval mode for the export (and restore it after). Off for
            PT2E graph modules, which refuse ``.eval()`` and are already in eval form.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ConfigError: ``opset`` < 18.
        ModelError: The exporter or the ONNX checker rejects the model.
        BackendUnavailable: ``onnx``/``onnxscript`` are not installed.
    """
    if opset < MIN_OPSET:
        raise ConfigError(f"ONNX opset {opset} is not supported; use opset >= {MIN_OPSET}")
    if not isinstance(sample, torch.Tensor) or sample.ndim < 1:
        raise ConfigError("export sample must be a torch.Tensor with a batch dimension")
    onnx = _require("onnx")
    _require("onnxscript")
    final = Path(path)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    was_training = model.training
    if switch_mode:
        model.eval()
    try:
        with atomic_path(final) as tmp:
            try:
                _export_to(model, sample, tmp, opset, dynamic_shapes)
                _embed_external_data(onnx, tmp)
                try:
                    onnx.checker.check_model(str(tmp), full_check=True)
                except Exception as exc:
                    raise ModelError(f"exported ONNX model fails onnx.checker: {exc}") from exc
            finally:
                # An external-data export (or a failed one) may leave "<tmp>.data" behind.
                tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)
    finally:
        if switch_mode:
            model.train(was_training)
    logger.info("exported %s to %s (opset %d, %.1f KiB)", type(model).__name__, final, opset,
                final.stat().st_size / 1024)
    return final


@dataclass
class ParityResult:
    """How closely an exported model's logits match PyTorch's on the same inputs.

    Attributes:
        max_abs_diff: Largest absolute logit difference.
        mean_abs_diff: Mean absolute logit difference.
        top1_agreement: Fraction of samples in [0, 1] whose argmax class agrees.
        samples: Number of samples compared.
    """

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return asdict(self)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> ParityResult:
    """Compare two logit arrays of shape ``(samples, classes)``.

    NaN/inf propagate into ``max_abs_diff``/``mean_abs_diff`` so callers can never mistake a
    broken output for a match.

    Raises:
        ParityError: Shapes differ or there is nothing to compare.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ParityError(f"logit shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    if ref.ndim < 1 or ref.shape[0] == 0:
        raise ParityError(f"no samples to compare (logit shape {ref.shape})")
    diff = np.abs(ref - cand)
    ref2 = ref.reshape(ref.shape[0], -1)
    cand2 = cand.reshape(cand.shape[0], -1)
    agree = np.argmax(ref2, axis=1) == np.argmax(cand2, axis=1)
    return ParityResult(
        max_abs_diff=float(np.max(diff)),
        mean_abs_diff=float(np.mean(diff)),
        top1_agreement=float(np.mean(agree)),
        samples=int(ref.shape[0]),
    )


def _torch_logits(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Reference logits from PyTorch, in eval mode without autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = [model(torch.from_numpy(x[i:i + batch_size])).detach().cpu().numpy()
                    for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outs, axis=0)


def _candidate_batches(n: int, batch_size: int, static: int | None) -> list[tuple[int, int]]:
    """Slices fed to ONNX Runtime.

    With a dynamic batch the first slice is a single sample and the rest are ``batch_size``, so
    at least two batch sizes (1 and another) run whenever ``n`` >= 2, proving the batch dim is
    really dynamic. With a static batch every slice has exactly that size (tail is padded).
    """
    if static is not None:
        return [(i, min(i + static, n)) for i in range(0, n, static)]
    slices = [(0, 1)]
    slices += [(i, min(i + batch_size, n)) for i in range(1, n, batch_size)]
    return slices


def _ort_logits(runner: Any, x: np.ndarray, batch_size: int,
                failures: list[str]) -> np.ndarray | None:
    """Candidate logits from ONNX Runtime; records a failure and returns None if a batch fails."""
    static = None
    shape = runner.session.get_inputs()[0].shape
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        static = shape[0]
    outs = []
    for start, stop in _candidate_batches(len(x), batch_size, static):
        batch = x[start:stop]
        if static is not None and len(batch) < static:
            pad = np.zeros((static - len(batch), *x.shape[1:]), dtype=x.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        try:
            out = runner.run(batch)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"onnxruntime failed on a batch of {len(batch)}: {first}")
            return None
        outs.append(np.asarray(out)[: stop - start])
    return np.concatenate(outs, axis=0)


def _nonfinite(name: str, arr: np.ndarray) -> str | None:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    return f"{name} logits contain {bad} NaN/inf value(s)" if bad else None


def check_parity(model: nn.Module, onnx_path: str | Path, x: np.ndarray, *, atol: float = 1e-3,
                 min_top1_agreement: float = 0.99, batch_size: int = 64,
                 threads: int = 1) -> ParityResult:
    """Check that ONNX Runtime reproduces ``model``'s logits on ``x``.

    All checks run before failing (max |diff| <= ``atol``, top-1 agreement >= the minimum,
    equal output shapes, finite values) so one error tells the user everything that is wrong.

    Returns:
        The comparison, when every check passes.

    Raises:
        ParityError: One or more checks failed; the message lists each with its numbers.
        DataError: ``x`` is empty.
        ConfigError: ``batch_size`` < 1.
        BackendUnavailable: onnxruntime is not installed.
    """
    from edgecompress.backends import get_backend

    if batch_size < 1:
        raise ConfigError(f"parity batch_size must be >= 1, got {batch_size}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"parity check needs at least one sample, got shape {x.shape}")
    onnx_path = Path(onnx_path)
    reference = _torch_logits(model, x, batch_size)
    failures: list[str] = []
    with get_backend("onnxruntime").load(onnx_path, threads=threads) as runner:
        candidate = _ort_logits(runner, x, batch_size, failures)
    for name, arr in (("PyTorch", reference), ("ONNX Runtime", candidate)):
        msg = _nonfinite(name, arr) if arr is not None else None
        if msg:
            failures.append(msg)
    result = None
    if candidate is not None and candidate.shape != reference.shape:
        failures.append(f"output shape mismatch: PyTorch {reference.shape} vs ONNX Runtime "
                        f"{candidate.shape}")
    elif candidate is not None:
        result = compare_logits(reference, candidate)
        if not result.max_abs_diff <= atol:  # written this way so NaN counts as a failure
            failures.append(f"max abs diff {result.max_abs_diff:.6g} > atol {atol:g} "
                            f"(mean abs diff {result.mean_abs_diff:.6g})")
        if not result.top1_agreement >= min_top1_agreement:
            failures.append(f"top-1 agreement {result.top1_agreement:.4f} < required "
                            f"{min_top1_agreement:.4f}")
    if failures or result is None:
        raise ParityError(
            f"ONNX parity check failed for {onnx_path.name} ({len(x)} samples): "
            + "; ".join(failures)
        )
    logger.info("ONNX parity ok for %s: max abs diff %.3g, top-1 agreement %.4f (%d samples)",
                onnx_path.name, result.max_abs_diff, result.top1_agreement, result.samples)
    return result
