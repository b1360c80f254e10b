"""The ORT presets' PyTorch int8 model carries the engine's int32 biases
(:mod:`edgecompress.quant.int32_bias`), including where a bias does not fit int32 and is clipped:
the reference and the real ORT engine then give the same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from edgecompress.backends import get_backend  # noqa: E402
from edgecompress.quant.presets import get_preset  # noqa: E402
from edgecompress.quant.training import calibrate, predict  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        net[0].weight[1].fill_(1e-9)  # a near-dead channel: weight scale ~ eps
        net[0].bias.copy_(torch.tensor([0.1234567, 50.0, -0.0333333, 0.5]))
    return net.eval()


def test_biases_snapped_and_clipped_like_the_engine(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    net = _net()
    conv_bias = net[0].bias.detach().clone()
    preset = get_preset("ort-x86-avx2")
    prepared = preset.prepare(net, torch.from_numpy(x[:2]), qat=False)
    calibrate(prepared, x)
    converted = preset.convert(prepared)
    biases = {n: b for n, b in converted.named_buffers() if n.endswith("bias")}
    biases.update({n: p for n, p in converted.named_parameters() if n.endswith("bias")})
    snapped = next(b for b in biases.values() if b.shape == (4,))
    after_convert = snapped.detach().clone()
    assert 0 < after_convert[1] < 0.5 * conv_bias[1]  # clipped (2**31 - 1 steps), as ORT does
    assert torch.allclose(after_convert[[0, 2, 3]], conv_bias[[0, 2, 3]], atol=1e-2)
    assert not torch.equal(after_convert, conv_bias)
    from edgecompress.quant.int32_bias import snap_biases_to_int32

    counts = snap_biases_to_int32(converted)  # convert already snapped: nothing moves
    assert counts["biases"] == 2
    assert torch.equal(snapped.detach(), after_convert)
    preset.export(converted, torch.from_numpy(x[:2]), tmp_path / "q.onnx")
    artifact = get_backend("onnxruntime").build(tmp_path / "q.onnx", tmp_path / "engine",
                                                precision="int8")
    with get_backend("onnxruntime").load(artifact) as runner:
        out = runner.run(x)
    reference = predict(converted, x)
    step = np.diff(np.unique(reference)).min()
    assert np.abs(out - reference).max() <= 0.5 * step
