"""Each int8 op of the ORT engine, run alone on the PyTorch int8 model's own input codes,
reproduces the reference's output codes: MobileNetV2's ops (ReLU6 fused into the conv's
quantization, depthwise per-channel weights, the linear-bottleneck residual Add with its own
zero point, GlobalAveragePool, the Linear head) included. Whole-network disagreement on a weak
model then comes from single-step roundings growing with depth (benchmarks/int8_layer_parity.py),
not from an op that computes something else; and the op-by-op check does flag such an op."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from edgecompress.backends import get_backend  # noqa: E402
from edgecompress.backends.onnxruntime import INT8_DISABLED_OPTIMIZERS  # noqa: E402
from edgecompress.quant.onnx_passes import load  # noqa: E402
from edgecompress.quant.parity_probe import (  # noqa: E402
    isolated_op_codes,
    reference_codes,
)
from edgecompress.quant.presets import get_preset  # noqa: E402
from edgecompress.quant.training import calibrate  # noqa: E402


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
         act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_cbr(cin, 4 * cin), _cbr(4 * cin, 4 * cin, 3, stride,
                                                            groups=4 * cin),
                                   _cbr(4 * cin, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class _TinyMobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8, 3, 2), _InvertedResidual(8, 8, 1),
                                      _InvertedResidual(8, 16, 2), _InvertedResidual(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The net (random weights, varied BN statistics so ReLU6 clips), its PyTorch int8 model
    and the ORT int8 engine file built from it (uint8 rewrite, int32 biases)."""
    torch.manual_seed(0)
    net = _TinyMobileNetV2()
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.2, 1.0)
            mod.weight.data.uniform_(0.5, 2.5)
            mod.bias.data.uniform_(-1.0, 1.0)
    net.eval()
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.5, (48, 3, 32, 32)).astype(np.float32)
    preset = get_preset("ort-x86-avx2")
    example = torch.from_numpy(x[:2])
    prepared = preset.prepare(net, example, qat=False)
    calibrate(prepared, x[:32])
    converted = preset.convert(prepared)
    tmp = tmp_path_factory.mktemp("op_parity")
    preset.export(converted, example, tmp / "qdq.onnx")
    artifact = get_backend("onnxruntime").build(tmp / "qdq.onnx", tmp / "engine",
                                                precision="int8")
    return load(artifact), converted, x[32:]


def _ops(model) -> dict[str, str]:
    """Activation tensor -> the op type that computed it (through Clip/Reshape)."""
    from edgecompress.quant.parity_probe import _activation_quantizers, _origin

    return {q.output[0]: _origin(model, q).op_type for q in _activation_quantizers(model)}


@pytest.mark.parametrize("optimize", [True, False], ids=["fused", "unfused"])
def test_every_int8_op_matches_the_reference_on_its_own_inputs(engine, optimize):
    model, converted, x = engine
    ref = reference_codes(model, x, converted)
    assert ref, "PyTorch quantize nodes not matched to the ONNX QuantizeLinear nodes"
    got = isolated_op_codes(model, ref, optimize=optimize,
                            disabled_optimizers=INT8_DISABLED_OPTIMIZERS)
    ops = _ops(model)
    checked = {ops[name] for name in got}
    assert {"Conv", "Add", "GlobalAveragePool", "Gemm"} <= checked, checked
    for name, codes in got.items():
        steps = np.abs(codes - ref[name])
        assert steps.max() <= 1 and np.mean(steps > 0) <= 0.01, (
            f"{ops[name]} {name}: {100 * np.mean(steps > 0):.2f} % of codes differ, "
            f"max {steps.max()} steps")
    if optimize:  # the fused engine really ran int8 kernels, ReLU6 fused away
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess_ops = _fused_op_types(model, so, ort)
        assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool"} <= sess_ops, sess_ops
        assert "Clip" not in sess_ops


def _fused_op_types(model, so, ort) -> set[str]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))
        return {n.op_type for n in load(Path(tmp) / "opt.onnx").graph.node}


def test_a_wrong_op_is_flagged(engine):
    """A residual Add requantized with the wrong zero point (off by 3) is caught op by op."""
    import onnx
    from onnx import numpy_helper

    model, converted, x = engine
    ref = reference_codes(model, x, converted)
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    ops = _ops(bad)
    add_out = next(name for name, op in ops.items() if op == "Add")
    q = next(n for n in bad.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == add_out)
    inits = {i.name: i for i in bad.graph.initializer}
    right = int(numpy_helper.to_array(inits[q.input[2]]))
    wrong = right + 3 if right < 250 else right - 3
    zp = numpy_helper.from_array(np.array(wrong, np.uint8), name="wrong_zero_point")
    bad.graph.initializer.append(zp)
    q.input[2] = zp.name
    got = isolated_op_codes(bad, ref, optimize=True, disabled_optimizers=INT8_DISABLED_OPTIMIZERS)
    steps = np.abs(got[add_out] - ref[add_out])
    assert np.mean(steps > 1) > 0.5
