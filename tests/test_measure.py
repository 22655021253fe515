"""Crack measurement on masks of known geometry, its outputs, and the command."""

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from crackseg.io import write_image
from crackseg.measure import JOINT, JointRule, measure_mask, split_joints
from crackseg.measure.joints import straightness
from crackseg.report.crack_outputs import (
    crack_document, draw_widths, geojson, read_crack_document, width_class, width_classes, write_crack_outputs,
)
from crackseg.report.photo_outputs import output_paths
from tests.conftest import ROOT


def _band(width: float, angle_deg: float, length: float = 500, size: int = 600, centre=None) -> np.ndarray:
    """A straight crack: the pixels whose centre lies in a length x width rectangle at angle_deg
    (counter-clockwise as seen) around ``centre`` (x, y)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    cx, cy = centre or (size / 2 - 0.25, size / 2 - 0.25)
    dx, dy = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))
    along, across = (xs - cx) * dx + (ys - cy) * dy, -(xs - cx) * dy + (ys - cy) * dx
    return ((np.abs(along) < length / 2) & (np.abs(across) < width / 2)).astype(np.uint8)


def _arm(mask: np.ndarray, centre, angle_deg: float, length: float, width: float) -> None:
    """Add a crack from ``centre`` out to ``length`` at angle_deg (its butt end covers the centre)."""
    dx, dy = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(float)
    along, across = (xs - centre[0]) * dx + (ys - centre[1]) * dy, -(xs - centre[0]) * dy + (ys - centre[1]) * dx
    mask |= (along > -width / 2) & (along < length) & (np.abs(across) < width / 2)


@pytest.mark.parametrize("angle", [0, 30, 45])
def test_a_straight_line_500_px_long_6_px_wide(angle):
    (crack,) = measure_mask(_band(6, angle))
    assert crack.length == pytest.approx(500, abs=2)
    assert crack.mean_width == pytest.approx(6, abs=1) and crack.max_width == pytest.approx(6, abs=1)
    assert crack.orientation_deg == pytest.approx(angle, abs=1)
    assert (crack.branches, crack.ends, crack.junctions, crack.cells) == (1, 2, 0, 0)
    assert crack.type == {0: "horizontal", 30: "diagonal", 45: "diagonal"}[angle]


def test_vertical_and_thin_lines():
    (vertical,) = measure_mask(_band(3, 90))
    assert vertical.type == "vertical" and vertical.length == pytest.approx(500, abs=2)
    (hairline,) = measure_mask(_band(1, 10))
    assert hairline.length == pytest.approx(500, abs=2) and hairline.max_width == pytest.approx(1, abs=0.5)


@pytest.mark.parametrize("radius, width, degrees", [(150, 6, 180), (100, 3, 270)])
def test_a_circular_arc_within_2_percent(radius, width, degrees):
    ys, xs = np.mgrid[0:400, 0:400].astype(float)
    r, theta = np.hypot(xs - 200, ys - 200), np.degrees(np.arctan2(200 - ys, xs - 200)) % 360
    mask = (np.abs(r - radius) < width / 2) & (theta <= degrees)
    (crack,) = measure_mask(mask)
    assert crack.length == pytest.approx(radius * math.radians(degrees), rel=0.02)
    assert crack.mean_width == pytest.approx(width, abs=1) and crack.branches == 1


def test_a_y_is_one_crack_with_three_branches():
    mask = np.zeros((400, 400), bool)
    for angle in (90, 210, 330):
        _arm(mask, (200, 200), angle, 150, 5)
    (crack,) = measure_mask(mask)
    assert (crack.branches, crack.ends, crack.junctions, crack.type) == (3, 3, 1, "branched")
    assert crack.length == pytest.approx(450, rel=0.02)
    assert crack.max_width == pytest.approx(5, abs=1)  # the wider junction is left out


def test_two_separate_lines_are_two_cracks_numbered_top_down():
    mask = _band(4, 0, 300, 400, centre=(199.5, 299.5)) | _band(4, 10, 300, 400, centre=(200, 100))
    cracks = measure_mask(mask)
    assert [c.id for c in cracks] == [1, 2] and cracks[0].bbox[1] < cracks[1].bbox[1]
    assert [c.length for c in cracks] == [pytest.approx(300, abs=2)] * 2
    assert cracks[1].bbox == (50, 298, 300, 4) and cracks[1].centroid == pytest.approx((199.5, 299.5))


def test_bumps_of_the_outline_are_not_branches():
    mask = _band(8, 0, 300, 400)
    mask[190:196, 150:154] = 1  # a 5 px bump on the crack's edge
    (crack,) = measure_mask(mask)
    assert (crack.branches, crack.junctions, crack.type) == (1, 0, "horizontal")
    assert crack.length == pytest.approx(300, abs=2)


def test_a_network_is_map_cracking_and_tiny_holes_are_filled():
    mask = np.zeros((300, 300), np.uint8)
    for k in (20, 110, 200, 290):  # 4 x 4 lines 280 px long: 3 x 3 cells
        mask[k : k + 4, 10:290] = 1
        mask[10:290, k : k + 4] = 1
    (crack,) = measure_mask(mask)
    assert crack.type == "map" and crack.cells == 9 and len(crack.outline) == 10
    assert crack.length == pytest.approx(8 * 280, rel=0.02)
    blob = _band(10, 0, 100, 200)
    blob[99:101, 120:122] = 0  # a 4-pixel hole: noise, not a cell
    assert measure_mask(blob)[0].cells == 0


def test_mm_per_px_scales_every_length_and_width():
    (crack,) = measure_mask(_band(6, 30))
    px, mm = crack.to_dict(), crack.to_dict(mm_per_px=0.2)
    assert px["unit"] == "px" and mm["unit"] == "mm"
    for key in ("length", "max_width", "mean_width", "p90_width"):
        assert mm[key] == pytest.approx(px[key] * 0.2, abs=1e-3)
    for key in ("orientation_deg", "branches", "ends", "bbox", "centroid", "skeleton", "outline"):
        assert mm[key] == px[key]  # angles, counts and pixel geometry do not change
    assert crack_document([crack], (600, 600), {"mm_per_px": 0.2})["totals"]["total_length"] == mm["length"]


def test_an_empty_mask_gives_an_empty_report():
    assert measure_mask(np.zeros((50, 60), np.uint8)) == []
    document = crack_document([], (50, 60), {"mm_per_px": None})
    assert document["cracks"] == [] and document["totals"]["cracks"] == 0 and document["totals"]["max_width"] == 0
    assert geojson(document)["features"] == []
    assert (draw_widths(np.zeros((50, 60, 3), np.uint8), [], None) == 0).all()


def test_specks_and_min_length():
    mask = np.zeros((50, 60), np.uint8)
    mask[30, 30] = 1
    mask[10:12, 40:42] = 1
    mask[5, 5:25] = 1
    cracks = measure_mask(mask)
    assert [c.length for c in cracks] == [pytest.approx(20, abs=0.5), pytest.approx(2, abs=0.5), pytest.approx(1, abs=0.5)]
    assert [c.pixels for c in measure_mask(mask, min_length_px=10)] == [20]


def test_crack_outputs_are_streamed_as_the_whole_documents_would_be_written(tmp_path):
    mask = _band(6, 30)
    mask[40:42, 0:20] = 1
    cracks, settings = measure_mask(mask), {"mm_per_px": 0.5, "min_crack_length_px": 0.0}
    paths = output_paths(tmp_path, "p")
    row = write_crack_outputs(paths, np.zeros((*mask.shape, 3), np.uint8), cracks, settings)
    document = crack_document(cracks, mask.shape, settings)
    assert paths["cracks"].read_text() == json.dumps(document) and len(document["cracks"]) == 2
    assert paths["geojson"].read_text() == json.dumps(geojson(document))
    assert row["cracks"] == 2 and row["unit"] == "mm"
    assert "skeleton" not in read_crack_document(paths["cracks"], geometry=False)["cracks"][0]


def test_geojson_features_and_rings():
    mask = _band(6, 30)
    mask[0:2, 0] = 1  # a two-pixel crack: its outline is degenerate
    document = crack_document(measure_mask(mask), mask.shape, {"mm_per_px": None})
    collection = json.loads(json.dumps(geojson(document)))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
    for feature in collection["features"]:
        geometry = feature["geometry"]
        if feature["properties"]["part"] == "skeleton":
            assert geometry["type"] == "MultiLineString" and all(len(line) >= 2 for line in geometry["coordinates"])
        else:
            assert geometry["type"] == "Polygon"
            assert all(len(ring) >= 4 and ring[0] == ring[-1] for ring in geometry["coordinates"])
        assert {"length", "max_width", "mean_width", "orientation_deg", "type", "branches"} <= set(feature["properties"])


def test_width_classes_in_px_and_mm():
    assert width_classes(None) == ["< 2 px", "2-4 px", "4-8 px", ">= 8 px"]
    assert width_classes(0.1) == ["< 0.1 mm", "0.1-0.3 mm", "0.3-1 mm", ">= 1 mm"]
    assert width_class(np.array([1.5, 2, 5, 9]), None).tolist() == [0, 1, 2, 3]
    assert width_class(np.array([0.5, 2, 3, 12]), 0.1).tolist() == [0, 1, 2, 3]  # 0.05, 0.2, 0.3, 1.2 mm


def test_width_overlay_paints_the_centre_line_by_local_width():
    mask = _band(2, 0, 200, 300, centre=(150, 100)) | _band(12, 0, 200, 300, centre=(150, 200))
    image = draw_widths(np.full((300, 300, 3), 128, np.uint8), measure_mask(mask), None, thickness=3)
    assert tuple(image[100, 150]) == (0, 190, 0) and tuple(image[200, 150]) == (220, 0, 0)
    assert tuple(image[10, 10]) == (128, 128, 128)


def test_command_prints_json_and_rejects_bad_input(tmp_path):
    write_image(tmp_path / "mask.png", _band(6, 45) * 255)
    command = [sys.executable, "-m", "crackseg.measure"]
    result = subprocess.run(command + [str(tmp_path / "mask.png"), "--mm-per-px", "0.5"], capture_output=True,
                            text=True, cwd=ROOT, check=True)
    (crack,) = json.loads(result.stdout)
    assert {"length", "max_width", "mean_width", "orientation_deg", "type", "branches"} <= set(crack)
    assert crack["unit"] == "mm" and crack["length"] == pytest.approx(250, abs=1) and crack["type"] == "diagonal"
    result = subprocess.run(command + [str(tmp_path / "mask.png"), "--joints"], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(result.stdout)[0]["type"] == JOINT
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = subprocess.run(command + [str(tmp_path / "bad.png")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "bad.png" in result.stderr
    result = subprocess.run(command + [str(tmp_path / "mask.png"), "--mm-per-px", "0"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode != 0 and "must be > 0" in result.stderr


def _wavy(length: int = 300, amplitude: float = 12, width: float = 5, size: int = 400) -> np.ndarray:
    """A crack that wanders: a sine of ``amplitude`` px across a horizontal run of ``length`` px."""
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    centre = size / 2 + amplitude * np.sin((xs - 50) / 25)
    return ((xs >= 50) & (xs < 50 + length) & (np.abs(ys - centre) < width / 2)).astype(np.uint8)


def _tapered(length: int = 300, size: int = 400) -> np.ndarray:
    """A straight crack opening from 2 px to 12 px along its length."""
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    width = 2 + 10 * (xs - 50) / length
    return ((xs >= 50) & (xs < 50 + length) & (np.abs(ys - size / 2) < width / 2)).astype(np.uint8)


@pytest.mark.parametrize("angle", [0, 20, 90])
def test_a_long_straight_band_of_constant_width_is_a_joint(angle):
    (joint,) = measure_mask(_band(8, angle, length=300), joint_rule=JointRule())
    assert joint.type == JOINT and joint.length == pytest.approx(300, abs=2)
    assert measure_mask(_band(8, angle, length=300))[0].type != JOINT  # no rule: never a joint


@pytest.mark.parametrize("mask", [_wavy(), _tapered(), _band(8, 0, length=80), _band(35, 0, length=228)],
                         ids=["wanders", "tapers", "short", "wide"])  # wide: a 35 px gap (deepcrack test 11301-5)
def test_cracks_that_wander_taper_are_short_or_wide_are_not_joints(mask):
    (crack,) = measure_mask(mask, joint_rule=JointRule())
    assert crack.type != JOINT


def test_a_wide_straight_gap_is_no_joint_by_its_elongation_alone():
    wide = _band(35, 0, length=228)
    assert measure_mask(wide, joint_rule=JointRule(min_elongation=0))[0].type == JOINT
    assert measure_mask(wide, joint_rule=JointRule())[0].type != JOINT


def test_a_crack_crossing_a_joint_makes_one_instance_that_stays_a_crack():
    mask = _wavy(size=400) | _band(8, 90, length=390, size=400)
    (crack,) = measure_mask(mask, joint_rule=JointRule())
    assert crack.type == "branched"


def _joint_grid_with_a_bent_stub() -> np.ndarray:
    """Two joints meeting in a T, the cross joint running on 25 px past the junction with a bend."""
    mask = np.zeros((400, 400), np.uint8)
    for start, end in (((50, 150), (350, 150)), ((200, 150), (200, 300)), ((200, 150), (200, 135)), ((200, 135), (208, 126))):
        cv2.line(mask, start, end, 1, 8)
    return mask


def test_short_bent_branches_where_joints_meet_do_not_keep_a_grid_a_crack():
    mask = _joint_grid_with_a_bent_stub()
    assert measure_mask(mask, joint_rule=JointRule())[0].type == JOINT  # min_branch_px=30: the stub is ignored
    assert measure_mask(mask, joint_rule=JointRule(min_branch_px=0))[0].type == "branched"


def test_straightness_counts_the_long_branches_or_all_when_none_is_long():
    straight, bent = np.array([[0.0, 0], [300, 0]]), np.array([[0.0, 0], [10, 0], [20, 5]])
    assert straightness([straight, bent], [False, False]) < 0.99
    assert straightness([straight, bent], [False, False], min_branch_px=30) == 1.0
    assert straightness([bent], [False], min_branch_px=30) == straightness([bent], [False]) < 0.99


def test_split_joints_moves_exactly_the_joints_pixels_out_of_the_mask():
    joint, crack = _band(8, 0, length=300, size=400, centre=(200, 60)), _wavy(size=400)
    mask = (joint | crack).astype(bool)
    cracks = measure_mask(mask, joint_rule=JointRule())
    assert sorted(c.type for c in cracks) == ["horizontal", JOINT]
    joints = split_joints(mask, cracks)
    assert np.array_equal(joints, joint.astype(bool)) and np.array_equal(mask, crack.astype(bool))


def test_joints_are_counted_apart_from_the_cracks_in_the_totals():
    mask = _band(8, 0, length=300, size=400, centre=(200, 60)) | _wavy(size=400)
    document = crack_document(measure_mask(mask, joint_rule=JointRule()), mask.shape, {"mm_per_px": None})
    crack = next(c for c in document["cracks"] if c["type"] != JOINT)
    assert document["totals"]["cracks"] == 1 and document["totals"]["types"][JOINT] == 1
    assert document["totals"]["total_length"] == crack["length"] and document["totals"]["max_width"] == crack["max_width"]


def test_a_joint_rule_out_of_range_is_refused():
    with pytest.raises(ValueError, match="min_straightness in \\[0, 1\\]"):
        JointRule(min_straightness=1.2)
    with pytest.raises(ValueError, match="min_elongation >= 0"):
        JointRule(min_elongation=-1)
