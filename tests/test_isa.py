"""ISA detection, the per-ISA ONNX Runtime preset, and the saturation it exists to avoid."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.isa import PEAKS, cpu_info, isa_class, parse_cpuinfo, u8s8_saturates

ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
cpu MHz		: 2445.432
flags		: fpu sse4_1 sse4_2 avx fma avx2 bmi2
processor	: 1
cpu MHz		: 2600.000
flags		: fpu sse4_1 sse4_2 avx fma avx2 bmi2
"""
ZEN5 = "model name : AMD EPYC 9B45\nflags : avx2 fma avx512f avx512bw avx512_vnni\n"
GRAVITON3 = "processor : 0\nFeatures : fp asimd asimddp sve i8mm bf16\nCPU part : 0xd40\n"


def test_isa_classes_from_cpuinfo():
    zen3 = parse_cpuinfo(ZEN3, "x86_64")
    assert (zen3.model, zen3.isa, zen3.int8_saturates) == ("AMD EPYC 7B13", "avx2", True)
    assert zen3.clock_ghz == 2.6 and "cpu MHz" in zen3.clock_source
    assert zen3.int8_peak_macs_per_cycle == 32 and zen3.fp32_peak_macs_per_cycle == 16
    zen5 = parse_cpuinfo(ZEN5, "x86_64")
    assert (zen5.isa, zen5.int8_saturates, zen5.clock_ghz) == ("avx512-vnni", False, None)
    assert zen5.peak_gmacs("int8") is None
    arm = parse_cpuinfo(GRAVITON3, "aarch64")
    assert (arm.isa, arm.int8_saturates, arm.model) == ("arm64-i8mm", False,
                                                        "Arm CPU part 0xd40")
    assert arm.to_dict()["flags"] == ["asimd", "asimddp", "bf16", "i8mm", "sve"]
    assert isa_class({"avx2", "avx_vnni"}, "x86_64") == "avx-vnni"
    assert isa_class({"avx2", "avx512bw"}, "x86_64") == "avx512"
    assert isa_class({"asimddp"}, "aarch64") == "arm64-dotprod"
    assert isa_class(set(), "x86_64") == "generic"


def test_peak_formula_names_its_parts():
    zen3 = parse_cpuinfo(ZEN3, "x86_64")
    assert zen3.peak_gmacs("int8", threads=2) == pytest.approx(32 * 2.6 * 2)
    formula = zen3.peak_formula("int8")
    assert "32 int8 MAC/cycle/core (avx2)" in formula and "2.60 GHz" in formula


def test_this_machine_is_classified():
    info = cpu_info()
    assert info.isa in PEAKS
    assert info.to_dict()["isa"] == info.isa
    assert u8s8_saturates(info.isa) == info.int8_saturates


def test_profiles_carry_their_isa_into_targets():
    from edgecompress.recipe import parse_recipe

    recipe = parse_recipe({"targets": [{"profile": "x86-avx2-int8"},
                                       {"profile": "x86-avx512-vnni-int8"},
                                       {"precision": "int8"}]})
    avx2, vnni, local = recipe.targets
    assert (avx2.isa, avx2.precision) == ("avx2", "int8")
    assert (vnni.isa, vnni.precision) == ("avx512-vnni", "int8")
    # A profile-less local target is named after what it runs on.
    assert local.isa is None and local.name == f"{cpu_info().isa}-int8"


def _qdq_conv(path, weight_code: int, channels: int = 64) -> None:
    """x (1, channels, 1, 1) -> Q/DQ (u8, 1/255) -> 1x1 Conv with every weight at
    ``weight_code`` (int8, scale 1/weight_code) -> Q/DQ (u8, 0.5). With x = 1 the exact output is
    ``channels``; ORT fuses the group into one QLinearConv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    init = [numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.uint8), "xz"),
            numpy_helper.from_array(np.full((1, channels, 1, 1), weight_code, np.int8), "wq"),
            numpy_helper.from_array(np.array(1 / weight_code, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
            numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(
        nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 1])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize("weight_code", [127, 63])
def test_fused_u8s8_kernel_saturates_only_with_full_range_weights_without_vnni(
        tmp_path, weight_code):
    """The reason for ort-x86-avx2: on x86 without VNNI ORT's fused u8 x s8 kernel adds two
    products in a saturating 16-bit lane (255 x 127 x 2 > 32,767). 7-bit weights stay exact on
    every CPU; full-range weights are exact only where the CPU has VNNI (or is not x86)."""
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "conv.onnx"
    _qdq_conv(path, weight_code)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in ops  # the fused int8 kernel really ran
    got = float(sess.run(None, {"x": np.ones((1, 64, 1, 1), np.float32)})[0].ravel()[0])
    exact = weight_code == 63 or not cpu_info().int8_saturates
    if exact:
        assert got == pytest.approx(64.0, abs=0.5)
    else:
        assert got < 0.75 * 64.0, f"expected saturation on {cpu_info().isa}, got {got}"


def test_wide_weight_rewrite_makes_full_range_weights_exact_everywhere(tmp_path):
    """What the ORT int8 engine does on a CPU without VNNI for full-range weights (e.g. the
    tensorrt preset run on ORT): uint8 weights -> exact u8 x u8 kernels, on every CPU."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from edgecompress.quant.onnx_passes import rewrite_wide_int8_weights_to_uint8

    _qdq_conv(tmp_path / "conv.onnx", 127)
    model = onnx.load(str(tmp_path / "conv.onnx"))
    assert rewrite_wide_int8_weights_to_uint8(model) == 1
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = float(sess.run(None, {"x": np.ones((1, 64, 1, 1), np.float32)})[0].ravel()[0])
    assert got == pytest.approx(64.0, abs=0.5)
    _qdq_conv(tmp_path / "narrow.onnx", 63)
    assert rewrite_wide_int8_weights_to_uint8(onnx.load(str(tmp_path / "narrow.onnx"))) == 0


def test_avx2_preset_weights_fit_seven_bits(tmp_path):
    pytest.importorskip("torchao")
    import onnx
    import torch
    from onnx import TensorProto, numpy_helper

    from edgecompress.models.tiny import build_builtin
    from edgecompress.quant.presets import get_preset
    from edgecompress.quant.training import calibrate

    torch.manual_seed(0)
    model = build_builtin("resnet", num_classes=10, in_channels=1, width=0.25, depth=1).eval()
    x = torch.randn(16, 1, 8, 8)
    codes = {}
    for name in ("ort-x86-avx2", "ort-x86-vnni"):
        preset = get_preset(name)
        prepared = preset.prepare(model, x[:2], qat=False)
        calibrate(prepared, x.numpy())
        preset.export(preset.convert(prepared), x[:2], tmp_path / f"{name}.onnx")
        graph = onnx.load(str(tmp_path / f"{name}.onnx")).graph
        codes[name] = max(int(np.abs(numpy_helper.to_array(i).astype(np.int16)).max())
                          for i in graph.initializer if i.data_type == TensorProto.INT8
                          and i.dims)
    assert codes["ort-x86-avx2"] <= 63 < codes["ort-x86-vnni"] <= 127
