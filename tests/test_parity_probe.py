"""INT8 export parity: the criteria (top-1 agreement + task metric, max |diff| opt-in), exit code
5, and the per-layer probe naming the first layer where the engine diverges. Real exports and
real ONNX Runtime sessions on a tiny digits ResNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from edgecompress.errors import EdgeCompressError, ParityError  # noqa: E402
from edgecompress.export.int8_parity import judge_int8_parity  # noqa: E402
from edgecompress.models.tiny import build_builtin  # noqa: E402
from edgecompress.quant.presets import get_preset, preset_for_target  # noqa: E402
from edgecompress.quant.training import calibrate, predict  # noqa: E402
from edgecompress.recipe import QatConfig  # noqa: E402
from edgecompress.stages.qat import _check_onnx  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    return x[:1400], data.target[:1400].astype(np.int64), x[1400:], data.target[1400:]


def _export(preset_name: str, digits, path):
    """A briefly trained tiny ResNet, PTQ with ``preset_name``, exported to ``path``."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.5, depth=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[i:i + 64])),
                                                     torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    preset = get_preset(preset_name)
    prepared = preset.prepare(model, torch.from_numpy(x[:2]), qat=False)
    calibrate(prepared, x[:256])
    converted = preset.convert(prepared)
    preset.export(converted, torch.from_numpy(x[:2]), path)
    return converted


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "q.onnx"
    converted = _export(preset_for_target("onnxruntime", None), digits, path)
    return path, converted


def _corrupt(src, dst, layer: str, what: str) -> None:
    """Break one layer of an exported QDQ file: negate its int8 weights or scale them 8x."""
    import onnx
    from onnx import numpy_helper

    from edgecompress.quant.parity_probe import module_path

    model = onnx.load(str(src))
    conv = next(n for n in model.graph.node if module_path(n) == layer and n.op_type == "Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    name = dq.input[0] if what == "weight" else dq.input[1]
    init = next(i for i in model.graph.initializer if i.name == name)
    values = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(-values if what == "weight" else values * 8, name))
    onnx.save(model, str(dst))


def test_correct_export_passes_on_metric_and_agreement(exported, digits):
    path, converted = exported
    _, _, x_test, y_test = digits
    reference = predict(converted, x_test)
    cfg = QatConfig()
    parity = _check_onnx(path, reference, x_test, y_test, cfg, converted)
    assert parity["top1_agreement"] >= cfg.min_top1_agreement
    assert abs(parity["metric_diff_pp"]) <= cfg.max_metric_diff_pp
    assert parity["reference_accuracy"] > 0.5  # a trained model, so the metric means something
    assert parity["samples"] == len(x_test) and parity["max_abs_diff"] >= 0  # still reported
    assert parity["criteria"]["rtol"] is None


@pytest.mark.parametrize(("what", "layer"), [("weight", "stage2.0.conv1"),
                                             ("scale", "stage3.0.conv1")])
def test_a_corrupted_layer_fails_with_exit_5_and_is_named(exported, digits, tmp_path, what,
                                                          layer):
    path, converted = exported
    _, _, x_test, y_test = digits
    bad = tmp_path / "bad.onnx"
    _corrupt(path, bad, layer, what)
    with pytest.raises(ParityError) as info:
        _check_onnx(bad, predict(converted, x_test), x_test, y_test, QatConfig(), converted)
    err = info.value
    assert err.exit_code == 5
    msg = str(err)
    assert f"first diverging layer: {layer} " in msg, msg
    assert "exported file itself" in msg, msg  # ORT's exact emulation differs too
    for text in ("top-1 agreement", "accuracy", "stages.qat.min_top1_agreement",
                 "stages.qat.max_metric_diff_pp", "stages.qat.keep_fp32"):
        assert text in msg, (text, msg)


def test_probe_blames_the_kernels_when_only_the_fused_path_diverges(digits, tmp_path):
    """Full-range weights on a CPU whose u8 x s8 kernels saturate, without the uint8 rewrite:
    the file is right (ORT's exact emulation matches PyTorch), the fused kernels are not."""
    import onnx

    from edgecompress.isa import cpu_info
    from edgecompress.quant.parity_probe import first_divergence

    if not cpu_info().int8_saturates:
        pytest.skip("this CPU's u8 x s8 int8 kernels do not saturate (VNNI or ARM)")
    converted = _export("ort-x86-vnni", digits, tmp_path / "wide.onnx")
    model = onnx.load(str(tmp_path / "wide.onnx"))
    found = first_divergence(model, digits[2][:32], converted)
    assert found is not None and found.against == "reference"
    assert found.file_at_fault is False and found.module is not None
    assert "fused int8 kernels" in found.describe()


def test_recipe_defaults_rtol_is_opt_in():
    cfg = QatConfig()
    assert cfg.rtol is None and cfg.min_top1_agreement == 0.97 and cfg.max_metric_diff_pp == 2.0
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 10))
    labels = reference.argmax(1)
    # Large logit differences that keep every decision: passes unless rtol is set.
    shifted = reference * 1.5
    record, failures = judge_int8_parity(reference, shifted, labels, min_top1_agreement=0.97,
                                         max_metric_diff_pp=2.0, rtol=None)
    assert failures == [] and record["max_abs_diff"] > 0.1 and record["metric_diff_pp"] == 0
    _, failures = judge_int8_parity(reference, shifted, labels, min_top1_agreement=0.97,
                                    max_metric_diff_pp=2.0, rtol=0.05)
    assert len(failures) == 1 and "stages.qat.rtol" in failures[0]
    # 5 % of the samples flipped to a wrong class: agreement 0.95 and -5 pp both fail.
    broken = reference.copy()
    broken[:10] = -broken[:10]
    record, failures = judge_int8_parity(reference, broken, labels, min_top1_agreement=0.97,
                                         max_metric_diff_pp=2.0, rtol=None)
    assert record["top1_agreement"] == pytest.approx(0.95)
    assert record["metric_diff_pp"] == pytest.approx(-5.0)
    assert len(failures) == 2
    with pytest.raises(Exception, match="less than or equal to 1"):
        QatConfig(min_top1_agreement=1.5)


def test_parity_error_has_its_own_exit_code():
    codes = {cls.exit_code for cls in EdgeCompressError.__subclasses__() if cls is not ParityError}
    assert ParityError.exit_code == 5 and 5 not in codes
    assert ParityError("x").exit_code == 5


def test_near_ties_do_not_count_as_disagreement() -> None:
    """A collapsed model (near-constant logits) flips on rounding noise: not a divergence;
    the same flips on decisive samples are."""
    rng = np.random.default_rng(0)
    flat = 2.0 + 0.001 * rng.standard_normal((200, 10))  # every margin far below 2% of 2.0
    noisy = flat + 0.01 * rng.standard_normal(flat.shape)
    record, failures = judge_int8_parity(flat, noisy, None, min_top1_agreement=0.97,
                                         max_metric_diff_pp=None)
    assert record["top1_agreement"] < 0.5 and record["near_ties"] == 200
    assert record["top1_agreement_decisive"] == 1.0 and failures == []
    decisive = rng.standard_normal((200, 10)) * 3.0
    broken = rng.standard_normal((200, 10)) * 3.0  # a broken export: unrelated logits
    record, failures = judge_int8_parity(decisive, broken, None, min_top1_agreement=0.97,
                                         max_metric_diff_pp=None)
    assert record["top1_agreement_decisive"] < 0.5 and record["near_ties"] < 20
    assert failures and "decisive samples" in failures[0]
