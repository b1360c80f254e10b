"""Tests for edgecompress.models: built-in CNNs, loading, heads and statistics."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import ConfigError, ModelError
from edgecompress.models import (
    FAMILIES,
    backbone_groups,
    build_builtin,
    check_model_io,
    count_macs,
    count_params,
    find_head,
    load_model,
    model_size_bytes,
    replace_head,
)


class Untrusted:
    """A custom class: pickling an instance puts a code reference in the checkpoint."""

    def __init__(self) -> None:
        self.note = "custom"


def _tiny(family: str = "resnet", num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return build_builtin(family, num_classes=num_classes, in_channels=in_channels, width=0.25)


# --------------------------------------------------------------------------- built-in family


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,depth", [(0.25, 1), (0.5, 2), (1.0, 1)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_builtin_forward_shapes(family: str, width: float, depth: int,
                                shape: tuple[int, int, int]) -> None:
    model = build_builtin(family, num_classes=7, in_channels=shape[0], width=width, depth=depth)
    names = [name for name, _ in model.named_children()]
    assert names == ["stem", "stage1", "stage2", "stage3", "pool", "classifier"]
    assert isinstance(model.classifier, nn.Linear)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_width_and_depth_scale_params(family: str) -> None:
    big = count_params(build_builtin(family, num_classes=10, in_channels=3, width=1.0, depth=2))
    small = count_params(build_builtin(family, num_classes=10, in_channels=3, width=0.25,
                                       depth=1))
    assert big >= 5 * small
    if family == "resnet":
        assert 500_000 <= big <= 1_500_000
    # Channels are multiples of 8 with a floor of 8.
    tiny = build_builtin(family, num_classes=10, in_channels=3, width=0.01)
    assert tiny.classifier.in_features == 8
    odd = build_builtin(family, num_classes=10, in_channels=3, width=0.3)
    assert odd.classifier.in_features % 8 == 0


def test_mobilenet_uses_depthwise_and_residuals() -> None:
    model = build_builtin("mobilenet", num_classes=3, in_channels=3, depth=2)
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == 6
    assert model.stage1[0].use_residual and not model.stage2[0].use_residual
    assert model.stage2[1].use_residual


def test_unknown_family_lists_known() -> None:
    with pytest.raises(ConfigError, match="resnet, mobilenet"):
        build_builtin("vgg", num_classes=10, in_channels=3)


def test_onnx_export_dynamic_batch_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    for family in FAMILIES:
        model = _tiny(family, num_classes=5, in_channels=3).eval()
        # Non-trivial BN statistics, so a wrong folding of BN in the export would show.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        path = tmp_path / f"{family}.onnx"
        x = torch.randn(2, 3, 16, 16)
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                          verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        for batch in (1, 5):
            xb = torch.randn(batch, 3, 16, 16)
            expected = model(xb).detach().numpy()
            got = session.run(None, {input_name: xb.numpy()})[0]
            assert got.shape == (batch, 5)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- loading


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...] = (2, 1, 8, 8)) -> None:
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b(x))


def test_load_builtin_with_pt_weights(tmp_path: Path) -> None:
    source = _tiny().eval()
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    loaded = load_model("builtin", family="resnet", width=0.25, weights=path, num_classes=4,
                        in_channels=1)
    assert not loaded.training
    _same_outputs(source, loaded)


def test_load_builtin_plain_state_dict_and_model_key(tmp_path: Path) -> None:
    source = _tiny("mobilenet").eval()
    for i, payload in enumerate([source.state_dict(), {"model": source.state_dict()}]):
        path = tmp_path / f"w{i}.pth"
        torch.save(payload, path)
        loaded = load_model("builtin", family="mobilenet", width=0.25, weights=path,
                            num_classes=4, in_channels=1)
        _same_outputs(source, loaded)


def test_load_factory_from_file_with_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    factory_file = tmp_path / "my_models.py"
    factory_file.write_text(textwrap.dedent("""
        from torch import nn

        def make(hidden=8, classes=3):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))
        """))
    spec = f"{factory_file}:make"
    kwargs = {"hidden": 6, "classes": 3}
    first = load_model("factory", factory=spec, kwargs=kwargs, num_classes=3, in_channels=1)
    weights = tmp_path / "student.safetensors"
    save_file(first.state_dict(), str(weights))
    second = load_model("factory", factory=spec, kwargs=kwargs, weights=weights,
                        num_classes=3, in_channels=1, role="student")
    _same_outputs(first, second)
    assert second[1].out_features == 6


def test_load_factory_module_spec_and_errors(tmp_path: Path) -> None:
    model = load_model("factory", factory="torch.nn:Linear",
                       kwargs={"in_features": 4, "out_features": 2}, num_classes=2,
                       in_channels=1)
    assert isinstance(model, nn.Linear) and not model.training
    with pytest.raises(ModelError, match="no_such_module_xyz"):
        load_model("factory", factory="no_such_module_xyz:make", num_classes=2, in_channels=1)
    with pytest.raises(ModelError, match="no attribute 'Nope'"):
        load_model("factory", factory="torch.nn:Nope", num_classes=2, in_channels=1)
    with pytest.raises(ModelError, match="not a callable"):
        load_model("factory", factory="math:pi", num_classes=2, in_channels=1)
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        load_model("factory", factory="builtins:dict", num_classes=2, in_channels=1)
    missing = tmp_path / "nowhere.py"
    with pytest.raises(ModelError, match="nowhere.py"):
        load_model("factory", factory=f"{missing}:make", num_classes=2, in_channels=1)


def test_load_torchscript_scripted_and_traced(tmp_path: Path) -> None:
    source = _tiny().eval()
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(source).save(str(scripted))
    traced = tmp_path / "traced.pt"
    torch.jit.trace(source, torch.zeros(1, 1, 8, 8)).save(str(traced))
    for path in (scripted, traced):
        loaded = load_model("torchscript", path=path, num_classes=4, in_channels=1)
        _same_outputs(source, loaded)


def test_load_export_pt2(tmp_path: Path) -> None:
    source = _tiny().eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(source, (torch.zeros(2, 1, 8, 8),)), str(path))
    loaded = load_model("export", path=path, num_classes=4, in_channels=1)
    _same_outputs(source, loaded)
    check_model_io(loaded, (1, 8, 8), 4)


def test_missing_files_name_path_and_role(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    with pytest.raises(ModelError, match=r"student weights file not found: .*gone\.pt"):
        load_model("builtin", family="resnet", weights=missing, num_classes=4, in_channels=1,
                   role="student")
    with pytest.raises(ModelError, match=r"teacher model file not found: .*gone\.pt"):
        load_model("torchscript", path=missing, num_classes=4, in_channels=1)
    with pytest.raises(ConfigError, match="unknown model kind"):
        load_model("onnx", num_classes=4, in_channels=1)


def test_pickled_code_refused_unless_trusted(tmp_path: Path) -> None:
    source = _tiny().eval()
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": source.state_dict(), "meta": Untrusted()}, path)
    with pytest.raises(ModelError) as info:
        load_model("builtin", family="resnet", width=0.25, weights=path, num_classes=4,
                   in_channels=1)
    message = str(info.value)
    assert str(path) in message
    assert "pickled code" in message and "trust_pickle: true" in message
    assert "Untrusted" in message
    loaded = load_model("builtin", family="resnet", width=0.25, weights=path, num_classes=4,
                        in_channels=1, trust_pickle=True)
    _same_outputs(source, loaded)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_names_file(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    source = _tiny()
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), good)
    else:
        save_file(source.state_dict(), str(good))
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"bad\.(pt|safetensors) is corrupt"):
        load_model("builtin", family="resnet", width=0.25, weights=bad, num_classes=4,
                   in_channels=1)


def test_garbage_file_is_corrupt_without_unsafe_advice(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(ModelError, match=r"garbage\.bin is corrupt") as info:
        load_model("builtin", family="resnet", weights=bad, num_classes=4, in_channels=1)
    assert "weights_only" not in str(info.value)
    onnx_file = bad.rename(bad.with_suffix(".onnx"))
    with pytest.raises(ModelError, match=r"unsupported suffix '\.onnx'"):
        load_model("builtin", family="resnet", weights=onnx_file, num_classes=4, in_channels=1)


def test_shape_mismatch_and_unexpected_keys_listed(tmp_path: Path) -> None:
    state = _tiny(num_classes=10).state_dict()
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "ten_classes.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as info:
        load_model("builtin", family="resnet", width=0.25, weights=path, num_classes=4,
                   in_channels=1)
    message = str(info.value)
    assert "ten_classes.pt" in message
    assert "classifier.weight: checkpoint (10, 32) vs model (4, 32)" in message
    assert "unexpected keys: extra.weight (3,)" in message


def test_missing_keys_listed_but_bn_counter_tolerated(tmp_path: Path) -> None:
    source = _tiny().eval()
    state = {k: v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counter.pt"
    torch.save(state, path)
    _same_outputs(source, load_model("builtin", family="resnet", width=0.25, weights=path,
                                     num_classes=4, in_channels=1))
    del state["stem.0.weight"]
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing keys: stem\.0\.weight \(8, 1, 3, 3\)"):
        load_model("builtin", family="resnet", width=0.25, weights=path, num_classes=4,
                   in_channels=1)


def test_check_model_io() -> None:
    model = _tiny(in_channels=1)
    model.train()
    check_model_io(model, (1, 8, 8), 4)
    assert model.training
    with pytest.raises(ModelError, match=r"teacher model fails on input shape \(2, 3, 8, 8\)"):
        check_model_io(model, (3, 8, 8), 4)
    assert model.training
    with pytest.raises(ModelError, match=r"output shape \(2, 4\).*\(2, 10\)"):
        check_model_io(model.eval(), (1, 8, 8), 10, role="student")
    assert not model.training
    check_model_io(model, (1, 8, 8), None)


# --------------------------------------------------------------------------- heads


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.neck = nn.Linear(8, 8)
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(8, 100))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.features(x)))


def test_find_and_replace_head_nested() -> None:
    model = _Nested()
    assert find_head(model) == "head.1"
    assert find_head(model, "neck") == "neck"
    with pytest.raises(ModelError, match="'fc' not found.*head.1"):
        find_head(model, "fc")
    with pytest.raises(ModelError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Flatten(), nn.ReLU()))
    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1))  # SqueezeNet-style conv head
    assert find_head(convs) == "1"
    assert replace_head(convs, 2) == "1"  # already 2 outputs: kept
    with pytest.raises(ModelError, match="'1' is a Conv2d, expected nn.Linear"):
        replace_head(convs, 3)
    old = model.head[1]
    assert replace_head(model, 5) == "head.1"
    assert model.head[1] is not old and model.head[1].out_features == 5
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 5)
    same = model.head[1]
    assert replace_head(model, 5) == "head.1" and model.head[1] is same
    with pytest.raises(ModelError, match="expected nn.Linear"):
        replace_head(model, 3, head="features")


def test_replace_head_builtin_and_scripted() -> None:
    model = _tiny(num_classes=10)
    assert replace_head(model, 3) == "classifier"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    scripted = torch.jit.script(_tiny())
    assert find_head(scripted) == "classifier"
    with pytest.raises(ModelError, match="TorchScript.*factory"):
        replace_head(scripted, 3)


def test_backbone_groups() -> None:
    model = _tiny()
    groups = backbone_groups(model, "classifier")
    assert len(groups) == 4  # stem, stage1..3; pool has no parameters, classifier is the head
    expected = [list(getattr(model, n).parameters()) for n in ("stem", "stage1", "stage2",
                                                                 "stage3")]
    assert [[id(p) for p in g] for g in groups] == [[id(p) for p in g] for g in expected]
    nested = _Nested()
    groups = backbone_groups(nested, "head.1")
    assert [len(g) for g in groups] == [2, 2]  # features Linear, neck; head.1 excluded
    with pytest.raises(ModelError, match="not found"):
        backbone_groups(nested, "nope")


# --------------------------------------------------------------------------- stats


def test_count_macs_exact_with_depthwise() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),           # 4x5x5 outputs, 2*3*3 MACs each = 1800
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise: 4x5x5 outputs, 9 each = 900
        nn.Flatten(),
        nn.Linear(100, 3),                       # 3 outputs, 100 each = 300
    )
    model.train()
    assert count_macs(model, (2, 5, 5)) == 1800 + 900 + 300
    assert model.training
    assert count_params(model) == (2 * 4 * 9 + 4) + (4 * 9 + 4) + (100 * 3 + 3)
    assert model_size_bytes(model) == 4 * count_params(model)
    # Hooks are removed: a second count is not doubled, and scripted models use the fallback.
    assert count_macs(model, (2, 5, 5)) == 3000
    assert count_macs(torch.jit.script(model), (2, 5, 5)) == 3000


def test_count_macs_builtin_and_bn_buffers() -> None:
    model = _tiny()
    macs = count_macs(model, (1, 8, 8))
    assert macs > 0
    assert count_macs(model, (1, 16, 16)) > 3 * macs
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_size_bytes(model) == 4 * count_params(model) + buffers
