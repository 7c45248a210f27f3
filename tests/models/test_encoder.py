"""ResNetEncoder (METHOD §4.1): torchvision-compatible names, pretrained loading, shapes, input checks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from slopekp.models.base import EncoderOutput
from slopekp.models.encoder import IMAGENET_MEAN, IMAGENET_STD, ResNetEncoder, normalize_image


class _Payload:
    """A class that plain ``torch.load(weights_only=True)`` refuses to unpickle."""

    def __init__(self) -> None:
        self.value = 1


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _resnet18_backbone_shapes(width: int = 64) -> dict[str, tuple[int, ...]]:
    """torchvision resnet18's state-dict keys and shapes without ``fc.*``, written out from the architecture (an
    independent reference: torchvision is not a dependency)."""
    shapes = {"conv1.weight": (width, 3, 7, 7), **_bn("bn1", width)}
    c_in = width
    for i in range(4):
        c = width * 2**i
        for b in range(2):
            p = f"layer{i + 1}.{b}"
            shapes[f"{p}.conv1.weight"] = (c, c_in if b == 0 else c, 3, 3)
            shapes.update(_bn(f"{p}.bn1", c))
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            shapes.update(_bn(f"{p}.bn2", c))
            if b == 0 and i > 0:  # stride 2 and more channels: 1x1 projection shortcut
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", c))
        c_in = c
    return shapes


def _torchvision_file_state(width: int = 64, seed: int = 1) -> dict[str, torch.Tensor]:
    """A torchvision-format state dict (backbone + a 1000-class ``fc``) with random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in _resnet18_backbone_shapes(width).items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.1
    state["fc.weight"] = torch.randn(1000, 8 * width, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture(scope="module")
def small_encoder() -> ResNetEncoder:
    torch.manual_seed(0)
    return ResNetEncoder(image_size=64, width=16)


def test_names_and_shapes_match_resnet18():
    enc = ResNetEncoder(image_size=256, width=64)
    expected = _resnet18_backbone_shapes(64)
    assert len(expected) == 120  # torchvision resnet18: 122 entries, 2 of them fc.weight / fc.bias
    got = {k: tuple(v.shape) for k, v in enc.backbone_state_dict().items()}
    assert got == expected
    # everything else is enc_conv1 (conv + BN)
    rest = sorted(set(enc.state_dict()) - set(expected))
    assert rest == sorted(["enc_conv1.0.weight", "enc_conv1.0.bias", *_bn("enc_conv1.1", 256)])
    assert tuple(enc.enc_conv1[0].weight.shape) == (256, 512, 4, 4)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_names_and_shapes_match_torchvision():
    import torchvision

    ref = {k: tuple(v.shape) for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    got = {k: tuple(v.shape) for k, v in ResNetEncoder(width=64).backbone_state_dict().items()}
    assert got == ref


def test_width_and_blocks_scale_the_backbone():
    enc = ResNetEncoder(image_size=64, width=16, blocks=(1, 1, 3, 1))
    sd = enc.backbone_state_dict()
    assert tuple(sd["layer4.0.conv1.weight"].shape) == (128, 64, 3, 3)
    assert "layer3.2.conv2.weight" in sd and "layer3.3.conv1.weight" not in sd and "layer1.1.conv1.weight" not in sd
    assert enc.feature_channels == {"layer1": 16, "layer2": 32, "layer3": 64, "layer4": 128}
    assert enc.conv_channels == 64


def test_init():
    enc = ResNetEncoder(image_size=64, width=16)
    w = enc.enc_conv1[0].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and float(w.mean().abs()) < 0.002
    assert torch.equal(enc.enc_conv1[0].bias, torch.zeros(64))
    assert torch.equal(enc.bn1.weight, torch.ones(16)) and torch.equal(enc.layer2[0].bn2.bias, torch.zeros(32))
    # torchvision: Kaiming normal, fan-out, gain sqrt(2): std = sqrt(2 / (out_channels * k * k))
    conv = enc.layer3[1].conv1.weight.detach()
    assert abs(float(conv.std()) / (2 / (64 * 9)) ** 0.5 - 1) < 0.05


def test_output_shapes_256_width64():
    enc = ResNetEncoder(image_size=256, width=64).eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 256, 256))
    assert isinstance(out, EncoderOutput)
    sizes = {k: tuple(v.shape) for k, v in out.features.items()}
    assert sizes == {
        "layer1": (1, 64, 64, 64),
        "layer2": (1, 128, 32, 32),
        "layer3": (1, 256, 16, 16),
        "layer4": (1, 512, 8, 8),
    }
    assert tuple(out.conv.shape) == (1, 256, 4, 4) and tuple(out.flat.shape) == (1, 4096)
    assert enc.feature_channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert enc.feature_sizes == {"layer1": 64, "layer2": 32, "layer3": 16, "layer4": 8}
    assert (enc.conv_channels, enc.conv_size, enc.flat_dim) == (256, 4, 4096)
    torch.testing.assert_close(out.flat, out.conv.flatten(1), rtol=0, atol=0)


def test_output_shapes_64_width16(small_encoder):
    enc = small_encoder
    out = enc(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.features.items()} == {
        "layer1": (2, 16, 16, 16),
        "layer2": (2, 32, 8, 8),
        "layer3": (2, 64, 4, 4),
        "layer4": (2, 128, 2, 2),
    }
    assert tuple(out.conv.shape) == (2, 64, 1, 1) and tuple(out.flat.shape) == (2, 64)
    assert (enc.conv_size, enc.flat_dim) == (1, 64)
    assert enc.feature_sizes == {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}


def test_gradient_reaches_conv1():
    enc = ResNetEncoder(image_size=64, width=16)
    out = enc(torch.randn(2, 3, 64, 64))
    (out.flat.square().sum() + out.features["layer1"].mean()).backward()
    for p in (enc.conv1.weight, enc.layer4[1].conv2.weight, enc.enc_conv1[0].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_input_checks(small_encoder):
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels, got 1"):
        small_encoder(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="must be 64x64 .* got 128x128"):
        small_encoder(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="shape \\(B, 3, 64, 64\\), got \\(3, 64, 64\\)"):
        small_encoder(torch.zeros(3, 64, 64))


def test_constructor_checks():
    with pytest.raises(ValueError, match="image_size=32 is too small"):
        ResNetEncoder(image_size=32, width=8)
    ResNetEncoder(image_size=33, width=8)  # the smallest size with a 1x1 conv feature
    with pytest.raises(ValueError, match="width must be a positive int"):
        ResNetEncoder(width=0)
    with pytest.raises(ValueError, match="blocks must be 4 positive ints"):
        ResNetEncoder(blocks=(2, 2, 2))


def test_normalize_image_rgb_order():
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize_image(mean.expand(2, 3, 4, 5)), torch.zeros(2, 3, 4, 5))
    out = normalize_image(torch.ones(1, 3, 2, 2))
    # channel 0 is red: (1 - 0.485) / 0.229
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]))
    torch.testing.assert_close(out, (1 - mean) / std * torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="\\(B, 3, H, W\\)"):
        normalize_image(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="float"):
        normalize_image(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_round_trip_through_file(tmp_path):
    torch.manual_seed(1)
    a = ResNetEncoder(image_size=64, width=16)
    a(torch.randn(4, 3, 64, 64))  # training step: moves the BN running statistics away from their init
    state = {**a.backbone_state_dict(), "fc.weight": torch.randn(10, 128), "fc.bias": torch.zeros(10)}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)

    torch.manual_seed(2)
    b = ResNetEncoder(image_size=64, width=16)
    report = b.load_pretrained(path)
    assert report.source == str(path)
    assert report.ignored == ("fc.bias", "fc.weight") and report.kept == ()
    assert len(report.loaded) == 120
    b.enc_conv1.load_state_dict(a.enc_conv1.state_dict())  # not part of a backbone file

    a.eval()
    b.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for name in oa.features:
        assert torch.equal(oa.features[name], ob.features[name])
    assert torch.equal(oa.flat, ob.flat)


def test_load_accepts_a_dict_without_batch_counters():
    state = _torchvision_file_state(16)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    enc = ResNetEncoder(image_size=64, width=16)
    report = enc.load_pretrained(state)
    assert report.source == "<state dict>" and len(report.kept) == 20 and len(report.loaded) == 100
    assert torch.equal(enc.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(enc.layer1[1].bn2.running_var, state["layer1.1.bn2.running_var"])


def test_bad_keys_are_listed_with_counts(tmp_path):
    enc = ResNetEncoder(image_size=64, width=16)
    before = {k: v.clone() for k, v in enc.backbone_state_dict().items()}
    state = _torchvision_file_state(16)
    del state["layer2.1.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(17)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        enc.load_pretrained(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "1 missing: layer2.1.conv1.weight" in msg
    assert "1 unexpected: layer5.0.conv1.weight" in msg
    assert "1 with a different shape (file vs encoder): bn1.weight (17,) vs (16,)" in msg
    # nothing was copied
    for k, v in enc.backbone_state_dict().items():
        assert torch.equal(v, before[k]), k


def test_width_mismatch_lists_first_ten(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_torchvision_file_state(64), path)
    enc = ResNetEncoder(image_size=64, width=16)
    with pytest.raises(ValueError, match="width=16") as info:
        enc.load_pretrained(path)
    msg = str(info.value)
    # every conv / BN tensor differs (the 20 scalar counters match): 100 mismatches, 10 listed
    assert "100 with a different shape" in msg and "... and 90 more" in msg
    assert "conv1.weight (64, 3, 7, 7) vs (16, 3, 7, 7)" in msg
    # the full-width encoder takes the same file
    ResNetEncoder(image_size=64, width=64).load_pretrained(path)


def test_refuses_missing_corrupt_and_unsafe_files(tmp_path):
    enc = ResNetEncoder(image_size=64, width=16)
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        enc.load_pretrained(tmp_path / "nope.pth")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a state dict" * 10)
    with pytest.raises(ValueError, match="garbage.pth: not a readable PyTorch state dict"):
        enc.load_pretrained(garbage)

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 7, 7), "extra": _Payload()}, unsafe)
    with pytest.raises(ValueError, match="unsafe.pth: refused to load: torch.load\\(weights_only=True\\).*_Payload"):
        enc.load_pretrained(unsafe)

    nested = tmp_path / "checkpoint.pth"
    torch.save({"model": enc.backbone_state_dict(), "step": 3}, nested)
    with pytest.raises(ValueError, match="not a flat \\{key: tensor\\} state dict.*2 entries that are not tensors"):
        enc.load_pretrained(nested)

    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a state dict"):
        enc.load_pretrained(listed)


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is not None, reason="safetensors is installed")
def test_safetensors_needs_the_package(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="needs the optional 'safetensors' package"):
        ResNetEncoder(image_size=64, width=16).load_pretrained(path)


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="safetensors not installed")
def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    state = _torchvision_file_state(16)
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    enc = ResNetEncoder(image_size=64, width=16)
    report = enc.load_pretrained(path)
    assert report.ignored == ("fc.bias", "fc.weight")
    assert torch.equal(enc.conv1.weight, state["conv1.weight"])
