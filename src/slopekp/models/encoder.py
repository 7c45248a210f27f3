"""The shared image encoder (METHOD §4.1): a ResNet-18 backbone plus ``enc_conv1``, and ImageNet input normalisation.

The backbone is written here (no torchvision dependency) with exactly torchvision's parameter and buffer names
(``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...), so
a torchvision ``resnet18`` state dict loads into it with :meth:`ResNetEncoder.load_pretrained` (its ``fc.*``
classifier is ignored). ``width`` scales every channel count: 64 is ResNet-18, smaller widths give a cheap CPU
network that can only be trained from scratch.

Feature strides for an ``S × S`` input (``S`` a multiple of 64): ``layer1 .. layer4`` at ``S/4 .. S/32``, then
``enc_conv1`` (k4, s2, p1) at ``S/64``. For ``S = 256``, width 64: layer1 64×64², layer2 128×32², layer3 256×16²,
layer4 512×8², ``conv`` 256×4² and ``flat`` 4096.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from slopekp.models.base import EncoderOutput
from slopekp.utils import device_constant

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "PretrainedLoad",
    "ResNetEncoder",
    "denormalize_image",
    "normalize_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet in **RGB** order (METHOD §1.3)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet in **RGB** order (METHOD §1.3)."""

#: How many keys of each kind a load error lists before "... and N more".
_MAX_LISTED_KEYS = 10


def normalize_image(img: Tensor) -> Tensor:
    """ImageNet normalisation of RGB images: ``(img − mean) / std`` per channel (METHOD §1.3).

    The original code applies these RGB statistics to BGR images (METHOD §10); here images are RGB, as the
    METHOD recommends, so a torchvision-pretrained backbone sees the statistics it was trained with.

    Args:
        img: ``(B, 3, H, W)`` float RGB in ``[0, 1]`` (the range is not checked).

    Returns:
        ``(B, 3, H, W)`` normalised, same dtype and device.
    """
    if not isinstance(img, Tensor) or img.dim() != 4 or img.shape[1] != 3:
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"img must be an RGB batch of shape (B, 3, H, W), got {shape}")
    if not img.dtype.is_floating_point:
        raise ValueError(f"img must be a float tensor in [0, 1], got dtype {img.dtype}")
    mean = device_constant(tuple(IMAGENET_MEAN), img.dtype, img.device).view(1, 3, 1, 1)
    std = device_constant(tuple(IMAGENET_STD), img.dtype, img.device).view(1, 3, 1, 1)
    return (img - mean) / std


def denormalize_image(img: Tensor) -> Tensor:
    """The inverse of :func:`normalize_image`: ``img·std + mean`` per channel, ``(B, 3, H, W)`` → RGB in [0, 1]."""
    mean = device_constant(tuple(IMAGENET_MEAN), img.dtype, img.device).view(1, 3, 1, 1)
    std = device_constant(tuple(IMAGENET_STD), img.dtype, img.device).view(1, 3, 1, 1)
    return img * std + mean


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution or pooling over a side of ``n`` pixels (floor mode)."""
    return (n + 2 * padding - kernel) // stride + 1


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``conv1`` is 3×3 with ``stride``, ``conv2`` 3×3; both without bias. ``downsample`` (``[conv1×1 with
    stride, BatchNorm2d]``, torchvision's name) is present only when the stride or the channel count changes;
    otherwise the shortcut is the identity and the block has no ``downsample.*`` keys.

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, ⌈H/stride⌉, ⌈W/stride⌉)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class PretrainedLoad(NamedTuple):
    """What :meth:`ResNetEncoder.load_pretrained` did."""

    source: str
    """The file path, or ``"<state dict>"`` for an in-memory dict."""
    loaded: tuple[str, ...]
    """Backbone keys copied from the source (sorted)."""
    ignored: tuple[str, ...]
    """Source keys deliberately skipped: torchvision's ``fc.*`` classifier (sorted)."""
    kept: tuple[str, ...]
    """BatchNorm ``*.num_batches_tracked`` counters absent from the source, left at their current value (sorted).
    torchvision files written before PyTorch 0.4.1 lack them; they do not affect the forward pass."""


def _listed(kind: str, keys: Sequence[str]) -> str:
    """``"N missing: a, b, ... and M more"`` for a load error."""
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f" ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"{len(keys)} {kind}: {shown}{more}"


def _unpickling_reason(e: Exception) -> str:
    """The informative part of torch's weights-only refusal (``Unsupported global: GLOBAL mod.Class ...``)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch colours part of its message
    found = re.search(r"WeightsUnpickler error:\s*(.*?\.)(\s|$)", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _read_state_dict(path: Path) -> Mapping:
    """Read a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file, refusing anything
    that needs arbitrary unpickling."""
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "pretrained weights file not found", str(path))
    if path.suffix.lower() == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise ValueError(
                f"{path}: reading .safetensors files needs the optional 'safetensors' package, which is not "
                "installed; install it or convert the file to a .pth state dict"
            )
        from safetensors.torch import load_file  # optional: checked just above

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for a corrupt header
            raise ValueError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a global outside torch's allow-list, or a malformed pickle stream
        raise ValueError(
            f"{path}: refused to load: torch.load(weights_only=True) cannot read it safely "
            f"({_unpickling_reason(e)}); only plain "
            "state dicts of tensors are accepted, saved with torch.save(model.state_dict(), path)"
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, IndexError, ... for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable PyTorch state dict file ({type(e).__name__}: {e})") from e


class ResNetEncoder(nn.Module):
    """ResNet-18-style backbone plus METHOD's ``enc_conv1`` (§4.1).

    Backbone: ``conv1`` (7×7, stride 2, no bias), ``bn1``, ``relu``, ``maxpool`` (3×3, stride 2), then
    ``layer1 .. layer4`` of :class:`BasicBlock` with ``width·(1, 2, 4, 8)`` channels (strides 1, 2, 2, 2),
    ``blocks`` blocks each. Initialised like torchvision (convs Kaiming-normal fan-out, BN ``γ = 1, β = 0``).

    ``enc_conv1``: ``[Conv2d(8·width → conv_channels, k4, s2, p1), BatchNorm2d, LeakyReLU(0.2)]``, conv weights
    ``N(0, 0.02)``, conv bias 0 (METHOD: 512 → 256 at width 64). Its keys (``enc_conv1.0.weight``, ...) are not
    part of a torchvision file and are never touched by :meth:`load_pretrained`.

    Attributes:
        image_size: the square input side ``S`` the encoder accepts.
        width: channels of ``layer1``.
        feature_channels: ``{'layer1': width, ..., 'layer4': 8·width}``.
        feature_sizes: ``{'layer1': S_1, ...}`` the (square) side of each feature map for an ``S × S`` input.
        conv_channels: ``C`` of :attr:`EncoderOutput.conv`.
        conv_size: ``h = w`` of :attr:`EncoderOutput.conv`.
        flat_dim: ``D = conv_channels · conv_size²`` of :attr:`EncoderOutput.flat`.
    """

    def __init__(
        self,
        image_size: int = 256,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        conv_channels: int | None = None,
    ) -> None:
        """
        Args:
            image_size: square input side in pixels (sizes the flat feature); at least 33 so that
                ``enc_conv1`` has a 1×1 output (multiples of 64 give exact strides).
            width: base channel count (64 = ResNet-18; 16 suits a CPU).
            blocks: :class:`BasicBlock` count of ``layer1 .. layer4`` (ResNet-18: ``(2, 2, 2, 2)``).
            conv_channels: output channels of ``enc_conv1``; default ``4·width`` (256 for ResNet-18).
        """
        super().__init__()
        for name, value in (("image_size", image_size), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        blocks = tuple(blocks)
        if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 positive ints (blocks of layer1 .. layer4), got {blocks!r}")
        conv_channels = 4 * width if conv_channels is None else conv_channels
        if isinstance(conv_channels, bool) or not isinstance(conv_channels, int) or conv_channels <= 0:
            raise ValueError(f"conv_channels must be a positive int, got {conv_channels!r}")

        # spatial sides: conv1 (7, 2, 3) and maxpool (3, 2, 1), then each of layer2..4 halves (3x3, stride 2, pad 1)
        side = _conv_out(_conv_out(image_size, 7, 2, 3), 3, 2, 1)
        sizes = {"layer1": side}
        for i in (2, 3, 4):
            side = _conv_out(side, 3, 2, 1)
            sizes[f"layer{i}"] = side
        conv_size = _conv_out(side, 4, 2, 1)
        if conv_size < 1:
            raise ValueError(
                f"image_size={image_size} is too small: layer4 is {side}x{side} and enc_conv1 (k4, s2, p1) needs at "
                "least 2x2 (image_size >= 33; multiples of 64 give exact strides)"
            )

        self.image_size = image_size
        self.width = width
        self.blocks = blocks
        self.feature_channels = {f"layer{i + 1}": width * 2**i for i in range(4)}
        self.feature_sizes = sizes
        self.conv_channels = conv_channels
        self.conv_size = conv_size
        self.flat_dim = conv_channels * conv_size * conv_size

        # torchvision's names, in torchvision's order
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = width
        for i, (n_blocks, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            out_ch = width * 2**i
            layer = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = out_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self.enc_conv1 = nn.Sequential(
            nn.Conv2d(in_ch, conv_channels, 4, stride=2, padding=1),
            nn.BatchNorm2d(conv_channels),
            nn.LeakyReLU(0.2),
        )
        nn.init.normal_(self.enc_conv1[0].weight, 0.0, 0.02)
        nn.init.zeros_(self.enc_conv1[0].bias)

    def forward(self, img: Tensor) -> EncoderOutput:
        """Encode a batch of normalised images.

        Args:
            img: ``(B, 3, S, S)`` float, ImageNet-normalised RGB (:func:`normalize_image`), ``S = image_size``.

        Returns:
            :class:`~slopekp.models.base.EncoderOutput` with ``features['layer1' .. 'layer4']`` ``(B, C_l, S_l,
            S_l)`` (:attr:`feature_channels`, :attr:`feature_sizes`), ``conv (B, conv_channels, h, h)`` and
            ``flat (B, flat_dim)``.
        """
        if not isinstance(img, Tensor) or img.dim() != 4:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"img must have shape (B, 3, {self.image_size}, {self.image_size}), got {shape}")
        if img.shape[1] != 3:
            raise ValueError(f"img must have 3 (RGB) channels, got {img.shape[1]} (shape {tuple(img.shape)})")
        if tuple(img.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"img must be {self.image_size}x{self.image_size} (the encoder's image_size), got "
                f"{img.shape[2]}x{img.shape[3]}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(img))))
        features = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features[name] = x
        conv = self.enc_conv1(x)
        return EncoderOutput(features=features, conv=conv, flat=conv.flatten(1))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's entries of :meth:`state_dict` (torchvision's keys, no ``enc_conv1.*``), detached."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("enc_conv1.")}

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, Tensor]) -> PretrainedLoad:
        """Copy torchvision-format ResNet weights into the backbone (``enc_conv1`` is left as it is).

        Every backbone key must be in the source with the same shape, and the source may hold nothing else
        except torchvision's ``fc.*`` classifier (ignored) — no silent partial loads. BatchNorm
        ``num_batches_tracked`` counters may be absent (old torchvision files) and are then kept. Values are cast
        to the parameters' dtype and device. Nothing is copied when a check fails.

        Args:
            source: a ``.pth``/``.pt`` file (read with ``torch.load(map_location='cpu', weights_only=True)``, so a
                file that needs arbitrary unpickling is refused), a ``.safetensors`` file (only if the optional
                ``safetensors`` package is installed), or an in-memory ``{key: tensor}`` mapping.

        Returns:
            :class:`PretrainedLoad`: the loaded, ignored and kept keys.

        Raises:
            FileNotFoundError: ``source`` is a path that does not exist.
            ValueError: unreadable or refused file, non-tensor values, or missing / unexpected / shape-mismatched
                keys (each kind counted and listed, first 10; a width other than 64 gives shape mismatches
                against a ResNet-18 file).
        """
        if isinstance(source, Mapping):
            name, state = "<state dict>", source
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            name, state = str(path), _read_state_dict(path)
        else:
            raise ValueError(f"source must be a file path or a state dict, got {type(source).__name__}")
        if not isinstance(state, Mapping):
            raise ValueError(f"{name}: expected a state dict ({{key: tensor}}), got a {type(state).__name__}")
        not_tensor = sorted(str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
        if not_tensor:
            raise ValueError(
                f"{name}: not a flat {{key: tensor}} state dict (a training checkpoint? pass its model state dict); "
                + _listed("entries that are not tensors", not_tensor)
            )

        own = self.backbone_state_dict()
        ignored = sorted(k for k in state if k.startswith("fc."))
        missing = sorted(k for k in own if k not in state)
        kept = [k for k in missing if k.endswith("num_batches_tracked")]
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        unexpected = sorted(k for k in state if k not in own and not k.startswith("fc."))
        mismatched = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if missing or unexpected or mismatched:
            problems = []
            if missing:
                problems.append(_listed("missing", missing))
            if unexpected:
                problems.append(_listed("unexpected", unexpected))
            if mismatched:
                detail = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched]
                problems.append(_listed("with a different shape (file vs encoder)", detail))
            hint = (
                f" (this encoder has width={self.width}, blocks={self.blocks}; torchvision's resnet18 is width=64, "
                "blocks=(2, 2, 2, 2))"
                if mismatched or missing
                else ""
            )
            raise ValueError(f"{name}: does not match the ResNet backbone{hint}: " + "; ".join(problems))

        loaded = sorted(k for k in own if k in state)
        with torch.no_grad():
            for key in loaded:
                own[key].copy_(state[key])  # state_dict() tensors share storage with the parameters and buffers
        return PretrainedLoad(source=name, loaded=tuple(loaded), ignored=tuple(ignored), kept=tuple(kept))
