"""The spec's frame (format 2, format-1 default) and the training side of the frame:
training cases reach the network exactly as inference sees them, whatever their storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_gi_seg.engine.domain import training_frame
from napari_gi_seg.engine.frame import case_to_model_frame, plan_frame
from napari_gi_seg.engine.preprocess import inplane_grid
from napari_gi_seg.io.orientation import reorient_volume
from napari_gi_seg.models.registry import BUNDLED_ROOT
from napari_gi_seg.models.spec import SPEC_FORMAT_VERSION, ModelFrame, ModelSpec


@pytest.fixture(scope="module")
def bundled_spec_dict() -> dict:
    return json.loads((BUNDLED_ROOT / "chaos-t2spir" / "1" / "spec.json").read_text())


def test_format_1_specs_load_with_the_chaos_default_frame(bundled_spec_dict, tmp_path):
    d = {k: v for k, v in bundled_spec_dict.items() if k != "frame"} | {"format_version": 1}
    spec = ModelSpec.from_dict(d)
    assert spec.format_version == SPEC_FORMAT_VERSION == 2
    assert spec.frame.axcodes == ("L", "A", "S") and spec.frame.spacing_mm == (2.0, 2.0)  # 320 mm / 160 px
    assert spec.frame.spacing_range_mm is None and spec.frame.intensity_range is None
    assert ModelSpec.from_dict(d | {"input_size": [256, 256]}).frame.spacing_mm == (1.25, 1.25)
    spec.save(tmp_path / "spec.json")
    again = ModelSpec.load(tmp_path / "spec.json")
    assert again.frame == spec.frame and json.loads((tmp_path / "spec.json").read_text())["format_version"] == 2


def test_bad_frames_and_newer_formats_are_refused(bundled_spec_dict, tmp_path):
    with pytest.raises(ValueError, match="axcodes"):
        ModelFrame(("L", "R", "S"))
    with pytest.raises(ValueError, match="spacing_mm"):
        ModelFrame(("L", "A", "S"), (0.0, 2.0))
    with pytest.raises(ValueError, match=r"\[min, max\]"):
        ModelFrame(("L", "A", "S"), (2.0, 2.0), {"z": [8.0, 7.0]})
    (tmp_path / "spec.json").write_text(json.dumps(bundled_spec_dict | {"format_version": 3}))
    with pytest.raises(ValueError, match="spec.json: invalid model spec: spec format 3 is newer"):
        ModelSpec.load(tmp_path / "spec.json")


def test_training_cases_reach_the_network_as_inference_sees_them(chaos_volume, chaos_labels):
    spec = ModelSpec.from_dict(
        json.loads((BUNDLED_ROOT / "chaos-t2spir" / "1" / "spec.json").read_text()) | {"name": "t"}
    )
    im0, t0 = case_to_model_frame(chaos_volume, chaos_labels.data, spec)
    assert im0.shape == t0.shape == (37, 160, 160) and im0.dtype == torch.float32
    for codes in (("R", "P", "I"), ("A", "L", "S")):
        im, t = case_to_model_frame(
            reorient_volume(chaos_volume, codes), reorient_volume(chaos_labels, codes).data, spec
        )
        torch.testing.assert_close(im, im0)
        assert torch.equal(t, t0)
    # multi-label (K, z, y, x) targets travel the same road
    masks = np.stack([chaos_labels.data == k for k in (1, 2)]).astype(np.uint8)
    _, tm = case_to_model_frame(chaos_volume, masks, spec)
    assert tm.shape == (2, 37, 160, 160) and torch.equal(tm[1].bool(), t0 == 2)
    with pytest.raises(ValueError, match="target shape"):
        case_to_model_frame(chaos_volume, chaos_labels.data[:3], spec)


def test_grids_keep_the_aspect_ratio_and_invert_exactly():
    g = inplane_grid((310, 360), (1.5, 1.5), (2.0, 2.0), (160, 160))  # a UW-Madison slice
    assert g.resampled == (232, 270) and g.padded == (256, 288) and g.offset == (12, 9)
    x = torch.rand(2, 3, 310, 360)
    assert g.to_network(x, fill=-1.0).shape == (2, 3, 256, 288)
    assert g.from_network(g.to_network(x)).shape == (2, 3, 310, 360)
    small = inplane_grid((205, 205), (1.25, 1.25), (2.0, 2.0), (160, 160))
    assert small.resampled == (128, 128) and small.padded == (160, 160)
    p = torch.rand(1, 5, 160, 160)
    back = small.from_network(p)
    assert back.shape == (1, 5, 205, 205)
    fixed = inplane_grid((310, 360), (1.5, 1.5), (2.0, 2.0), (160, 160), fixed=True)
    assert fixed.padded == (160, 160) and fixed.offset == (-36, -55)
    with pytest.raises(ValueError, match="cropping"):
        fixed.from_network(p)


def test_training_frame_measures_the_cases(chaos_volume):
    spec = ModelSpec(name="t", input_size=(128, 128), classes=[{"index": 1, "name": "liver"}])
    frame = training_frame([chaos_volume, reorient_volume(chaos_volume, ("R", "P", "S"))], spec)
    # the frame of the cases; FOV 320 mm over 128 px
    assert frame.axcodes in (("L", "A", "S"), ("R", "P", "S")) and frame.spacing_mm == (2.5, 2.5)
    assert frame.spacing_range_mm == {"z": [7.7, 7.7], "y": [1.25, 1.25], "x": [1.25, 1.25]}
    assert frame.fov_range_mm == {"y": [320.0, 320.0], "x": [320.0, 320.0]}
    assert set(frame.intensity_range) == {"p25", "p50", "p75"}
    # fine-tuning keeps the base's orientation and spacing, widens the ranges
    spec.frame = ModelFrame(("R", "A", "S"), (3.0, 3.0), {"z": [3.0, 5.0], "y": [1.0, 1.0], "x": [1.0, 1.0]})
    ft = training_frame([chaos_volume], spec, keep_frame=True)
    assert ft.axcodes == ("R", "A", "S") and ft.spacing_mm == (3.0, 3.0)
    assert ft.spacing_range_mm == {"z": [3.0, 7.7], "y": [1.0, 1.25], "x": [1.0, 1.25]}
    assert plan_frame(chaos_volume, spec).frame.ornt[2, 1] == -1  # x reversed into R
