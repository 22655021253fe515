import pytest
import torch

import torch.nn.functional as F

from crackseg.tiling import (
    TileCounts, _open_tiles, _ScaleGeometry, blend_weights, count_tiles, scale_factor, sliding_window, stride_for, tile_grid, tile_starts,
)


@pytest.mark.parametrize("length, tile, stride", [(1000, 256, 128), (256, 256, 128), (257, 256, 200), (100, 256, 128), (999, 64, 64)])
def test_tile_starts_cover_every_pixel_inside_the_photo(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    covered = torch.zeros(max(length, tile), dtype=torch.int32)
    for s in starts:
        covered[s : s + tile] += 1
    assert (covered[:length] > 0).all()
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(s + tile <= max(length, tile) for s in starts)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_tile_grid_and_bad_arguments():
    assert tile_grid(300, 200, 128, 128) == [(y, x) for y in (0, 128, 172) for x in (0, 72)]
    with pytest.raises(ValueError):
        tile_starts(100, 64, 65)
    with pytest.raises(ValueError):
        stride_for(64, 1.0)


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    w = blend_weights(64)
    assert w.shape == (64, 64) and w.min() > 0 and w[31:33, 31:33].min() > 0.99
    assert torch.equal(blend_weights(8, "constant"), torch.ones(8, 8))


@pytest.mark.parametrize("height, width", [(64, 64), (97, 131), (30, 45), (64, 200), (129, 64)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_identity_predictor_stitches_back_to_the_input(height, width, blend, overlap):
    image = torch.rand(2, height, width)
    out = sliding_window(image, lambda tiles: tiles, tile=64, overlap=overlap, batch_size=3, blend=blend)
    assert out.shape == image.shape
    torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


def test_uint8_photos_stitch_through_the_predictor():
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    out = sliding_window(image, lambda tiles: tiles.float(), tile=32, overlap=0.25)
    torch.testing.assert_close(out, image.float(), rtol=0, atol=1e-4)


def test_conv_model_matches_a_full_photo_forward_away_from_tile_borders():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)).eval()
    image, tile, radius = torch.rand(3, 150, 170), 48, 2  # two 3x3 convs see 2 px around
    with torch.no_grad():
        direct = net(image[None])[0]
    out = sliding_window(image, net, tile=tile, overlap=0.25, blend="gaussian")
    # A tile's edge differs from the full forward only where it cuts into the photo.
    exact = torch.ones(150, 170, dtype=torch.bool)
    for y, x in tile_grid(150, 170, tile, stride_for(tile, 0.25)):
        inner = torch.zeros_like(exact)
        inner[y + (radius if y > 0 else 0) : y + tile - (radius if y + tile < 150 else 0),
              x + (radius if x > 0 else 0) : x + tile - (radius if x + tile < 170 else 0)] = True
        band = torch.zeros_like(exact)
        band[y : y + tile, x : x + tile] = True
        exact &= ~(band & ~inner)
    assert exact.float().mean() > 0.6
    torch.testing.assert_close(out[0][exact], direct[0][exact], rtol=0, atol=1e-5)


def _upscaled_and_back(image, k):
    """The plain route at scale k: upsample the whole photo (bilinear), identity, block-average."""
    return F.avg_pool2d(F.interpolate(image[None], scale_factor=k, mode="bilinear", align_corners=False), k)[0]


@pytest.mark.parametrize("height, width", [(64, 64), (97, 131), (30, 45), (129, 64)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_identity_upscaled_tiles_stitch_to_the_whole_photo_route(height, width, blend):
    image = torch.rand(2, height, width) * 255
    for k in (2, 4):
        out = sliding_window(image, lambda tiles: tiles, tile=64, overlap=0.25, batch_size=5, blend=blend, scales=[k])
        torch.testing.assert_close(out, _upscaled_and_back(image, k), rtol=0, atol=1e-3)


@pytest.mark.parametrize("height, width", [(64, 64), (98, 130), (66, 94), (200, 300)])
def test_identity_downscaled_tiles_stitch_to_the_whole_photo_route(height, width):
    image = torch.rand(1, height, width) * 255
    k, tile = 2, 32
    out = sliding_window(image, lambda tiles: tiles, tile=tile, overlap=0.5, blend="constant", scales=[0.5])
    small = F.avg_pool2d(image[None], k)
    reference = F.interpolate(small, scale_factor=k, mode="bilinear", align_corners=False)[0]
    # Bilinear upsampling of a tile differs from the whole map's only in its outer source pixel
    # ring (edge replication vs. the neighbour tile): compare where every covering tile agrees.
    exact = torch.ones(height, width, dtype=torch.bool)
    for y, x in tile_grid(max(-(-height // k), tile), max(-(-width // k), tile), tile, stride_for(tile, 0.5)):
        sy, sx, f = y * k, x * k, tile * k
        band = torch.zeros_like(exact)
        band[sy : sy + f, sx : sx + f] = True
        inner_y = slice(sy + (sy > 0), sy + f - (sy + f < height))
        inner_x = slice(sx + (sx > 0), sx + f - (sx + f < width))
        band[inner_y, inner_x] = False
        exact &= ~band
    assert exact.float().mean() > 0.8
    torch.testing.assert_close(out[0][exact], reference[0][exact], rtol=0, atol=1e-3)


def test_constant_photo_stays_constant_at_every_scale_and_size():
    for height, width in [(20, 33), (100, 77), (256, 300)]:
        image = torch.full((3, height, width), 77.0)
        out = sliding_window(image, lambda tiles: tiles, tile=64, overlap=0.25, scales=[1, 2, 0.5])
        assert out.shape == (3, height, width)
        torch.testing.assert_close(out, image, rtol=0, atol=1e-3)


def test_multiscale_result_is_the_mean_of_the_single_scale_results():
    image = torch.rand(3, 90, 110) * 255
    predict = lambda tiles: tiles.mean(dim=1, keepdim=True) ** 0.5  # noqa: E731
    runs = [sliding_window(image, predict, tile=32, scales=[s]) for s in (1, 2, 0.5)]
    torch.testing.assert_close(sliding_window(image, predict, tile=32, scales=[1, 2, 0.5]), sum(runs) / 3)


def test_scales_must_map_onto_whole_pixels():
    assert scale_factor(2) == (True, 2) and scale_factor(0.5) == (False, 2) and scale_factor(0.25) == (False, 4)
    with pytest.raises(ValueError, match="1.5"):
        scale_factor(1.5)
    with pytest.raises(ValueError, match="multiple"):
        sliding_window(torch.rand(1, 40, 40), lambda t: t, tile=30, scales=[4])


def test_full_batches_show_the_model_one_shape_and_change_nothing():
    image = torch.rand(3, 97, 131) * 255
    shapes = []

    def predict(tiles):
        shapes.append(tuple(tiles.shape))
        return tiles.mean(dim=1, keepdim=True)

    reference = sliding_window(image, predict, tile=32, batch_size=5, scales=[1, 2, 0.5])
    assert len(set(shapes)) > 1  # the last batch of a scale is short
    shapes.clear()
    out = sliding_window(image, predict, tile=32, batch_size=5, scales=[1, 2, 0.5], full_batches=True)
    assert set(shapes) == {(5, 3, 32, 32)}
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def _cracked_photo(height=150, width=190, seed=0):
    """Dark thin lines on a noisy light background, and a predictor that finds dark pixels."""
    generator = torch.Generator().manual_seed(seed)
    image = 150 + 40 * torch.rand(3, height, width, generator=generator)
    image[:, 40:43, 10:150] = 20
    image[:, 60:140, 120:122] = 30
    return image, lambda tiles: torch.sigmoid((100 - tiles.mean(dim=1, keepdim=True)) / 15)


@pytest.mark.parametrize("scales, tile", [([1, 2, 0.5], 32), ([1, 2], 32), ([0.5, 1], 32), ([1, 3, 1 / 3], 48),
                                          ([2, 1, 0.5, 0.25], 32)])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.34, 0.5, 0.75, 1.0])
def test_cascade_gives_exactly_the_full_mask(scales, tile, threshold):
    image, predict = _cracked_photo()
    full = sliding_window(image, predict, tile=tile, batch_size=4, scales=scales)
    counts = TileCounts()
    pruned = sliding_window(image, predict, tile=tile, batch_size=4, scales=scales, threshold=threshold, counts=counts)
    assert torch.equal(pruned >= threshold, full >= threshold)
    open_pixels = pruned >= threshold
    assert torch.equal(pruned[open_pixels], full[open_pixels])  # exact wherever the mask can be crack
    assert counts.computed + counts.skipped == count_tiles(150, 190, tile, 0.25, scales)
    if threshold <= 1 / len(scales):  # the last scale alone could lift any pixel over it
        assert counts.skipped == 0 and torch.equal(pruned, full)
    if threshold == 0.5 and len(scales) > 2:  # a thin crack leaves most of the most expensive scale out
        costliest = max(count_tiles(150, 190, tile, 0.25, [s]) for s in scales)
        assert counts.skipped > 0.4 * costliest


def test_cascade_on_a_photo_that_is_all_crack_or_all_background():
    image, predict = _cracked_photo()
    for photo, expected_skips in ((torch.zeros_like(image), False), (torch.full_like(image, 255.0), True)):
        counts = TileCounts()
        full = sliding_window(photo, predict, tile=32, scales=[1, 2, 0.5])
        pruned = sliding_window(photo, predict, tile=32, scales=[1, 2, 0.5], threshold=0.5, counts=counts)
        assert torch.equal(pruned >= 0.5, full >= 0.5) and (counts.skipped > 0) == expected_skips


def test_a_cascade_opening_tiles_far_down_a_photo_holds_a_band_a_few_tiles_high(monkeypatch):
    from crackseg import tiling

    image = torch.full((3, 2000, 64), 200.0)
    image[:, 1980:1983, 10:50] = 20  # one crack, at the bottom
    predict = _cracked_photo()[1]
    rows, add = [], tiling._RowBand.add
    monkeypatch.setattr(tiling._RowBand, "add", lambda band, *a: (add(band, *a), rows.append(band.norm.shape[0])))
    pruned = sliding_window(image, predict, tile=32, batch_size=4, scales=[0.5, 1, 2], threshold=0.5)
    assert torch.equal(pruned >= 0.5, sliding_window(image, predict, tile=32, batch_size=4, scales=[0.5, 1, 2]) >= 0.5)
    assert max(rows) <= 4 * 64  # was: the band grew from row 0 down to the crack, 1996 rows


@pytest.mark.parametrize("scale", [1, 2, 0.5])
@pytest.mark.parametrize("height, width", [(150, 190), (40, 70)])
def test_cascade_opens_exactly_the_tiles_whose_footprint_reaches_the_bound(scale, height, width):
    so_far = torch.rand(2, height, width, generator=torch.Generator().manual_seed(3)) * 0.5
    so_far[1, 100 % height, 30] = 0.9  # one hot pixel, in the second channel
    so_far[0, height - 1, width - 1] = 0.8  # and one in the photo's last corner
    geometry = _ScaleGeometry(scale, 32, 24, height, width)
    f = geometry.footprint

    def brute_force(bound):
        origins = [geometry.source_origin(y, x) for y, x in geometry.positions]
        return [p for p, (sy, sx) in zip(geometry.positions, origins) if so_far[:, sy : sy + f, sx : sx + f].max() >= bound]

    for bound in (0.45, 0.7, 0.85, 0.95):
        assert _open_tiles(geometry, geometry.positions, so_far, bound) == brute_force(bound)
    if height > 100:  # the hot pixels open some tiles, not all
        assert 0 < len(brute_force(0.7)) < len(geometry.positions)
    assert brute_force(0.95) == []
