"""Hardening round 2 (issue 19), readers and the engine guard, on the scanner's own CHAOS
DICOM and the CHAOS NIfTI files: truncated members, MONOCHROME1, the T1-DUAL echoes
that share one SeriesInstanceUID, DICOM beside NIfTI, symlink loops and aliases; gzip
CRC, corrupt streams, qform/sform disagreement, xyzt_units, RGB24, a newline in a file
name; a header spacing that would make the engine resample to ~5000^2 per slice."""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_gi_seg import cli
from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import read_image
from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.volume import InvalidInputError


def _cli(argv, capsys) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def series(tmp_path, t2spir_p2) -> Path:
    """A private copy of patient 2's T2-SPIR series (26 files)."""
    return Path(shutil.copytree(t2spir_p2, tmp_path / "T2SPIR"))


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _by_position(folder: Path) -> list[Path]:
    """The series' files in slice order (along the normal)."""

    def pos(f):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        o = np.asarray(ds.ImageOrientationPatient, float)
        return float(np.asarray(ds.ImagePositionPatient, float) @ np.cross(o[:3], o[3:]))

    return sorted(_files(folder), key=pos)


# ------------------------------------------------------------------ DICOM: unreadable members
@pytest.mark.parametrize("keep", [1000, 100], ids=["header-cut", "no-preamble"])
def test_truncated_member_is_an_error_naming_it(series, keep):
    victim = _by_position(series)[12]
    victim.write_bytes(victim.read_bytes()[:keep])
    with pytest.raises(InvalidInputError) as ei:
        read_image(series)
    assert str(victim) in str(ei.value) and "skip" in str(ei.value)  # names the file and the opt-in


def test_skip_unreadable_warns_and_the_gap_is_refused_or_interpolated(series, t2spir_p2_volume):
    victim = _by_position(series)[12]
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=victim.name), pytest.raises(InvalidInputError, match="uneven slice gaps"):
        read_image(series, skip_unreadable=True)  # the slice it leaves missing is not hidden either
    with pytest.warns(UserWarning, match=victim.name), pytest.warns(UserWarning, match="interpolated"):
        [vol] = read_image(series, skip_unreadable=True, allow_uneven=True)
    ref = t2spir_p2_volume.data
    assert vol.shape == ref.shape  # 26 slices: the missing one interpolated from its neighbours
    np.testing.assert_allclose(vol.data[12], (ref[11] + ref[13]) / 2, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(vol.data[:12], ref[:12], rtol=1e-5, atol=1e-3)


def test_truncated_member_from_the_cli(series, capsys, tiny_key, tmp_path):
    victim = _by_position(series)[3]
    victim.write_bytes(victim.read_bytes()[:1000])
    rc, err = _cli(["segment", str(series), "-o", str(tmp_path / "o.nii.gz"), "--model", tiny_key], capsys)
    assert rc == 2 and len(err) == 1 and str(victim) in err[0] and "--skip-unreadable" in err[0]


# ------------------------------------------------------------------ DICOM: MONOCHROME1
def test_monochrome1_is_inverted(series, t2spir_p2_volume):
    ref = t2spir_p2_volume.data
    top = int(max(pydicom.dcmread(f).pixel_array.max() for f in _files(series)))
    for f in _files(series):
        ds = pydicom.dcmread(f)
        px = (top - ds.pixel_array.astype(np.int32)).astype(np.uint16)  # the same image, white = low
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = px.tobytes()
        ds.save_as(f)
    [vol] = read_image(series)
    assert vol.metadata["photometric"] == "MONOCHROME1 (inverted)"
    np.testing.assert_allclose(vol.data, ref - ref.min())  # high = bright again, as MONOCHROME2
    thr = np.percentile(ref, 75)
    assert int((vol.data > thr - ref.min()).sum()) == int((ref > thr).sum())  # the foreground, not its negative


# ------------------------------------------------------------------ DICOM: T1-DUAL, one UID, two echoes
def test_multi_echo_series_is_split_by_echo_time(t1dual_p2):
    from napari_gi_seg.engine.batch import output_names

    vols = read_image(t1dual_p2)  # InPhase/ and OutPhase/ share one SeriesInstanceUID
    assert [v.metadata["volume_label"] for v in vols] == ["e1", "e2"]  # EchoNumbers, as dcm2niix's _e1/_e2
    assert [v.metadata["echo_time_ms"] for v in vols] == [2.3, 4.62]  # opposed phase, in phase (SOURCE.md)
    assert len({v.metadata["series_instance_uid_hash"] for v in vols}) == 1
    [opp] = read_image(t1dual_p2 / "OutPhase")
    [inp] = read_image(t1dual_p2 / "InPhase")
    np.testing.assert_array_equal(vols[0].data, opp.data)
    np.testing.assert_array_equal(vols[1].data, inp.data)
    np.testing.assert_allclose(vols[1].affine, inp.affine)
    assert vols[0].name != vols[1].name and vols[0].name.endswith("_e1")
    layers = napari_get_reader(str(t1dual_p2))(str(t1dual_p2))
    assert [t[1]["name"].split()[0] for t in layers] == ["DICOM_anon_e1", "DICOM_anon_e2"]
    names = output_names(t1dual_p2, vols)  # segment -i
    assert len(set(names)) == 2 and names[0].endswith("_e1") and names[1].endswith("_e2")
    from napari_gi_seg.cli_segment import _output_paths

    one, two = _output_paths("out.seg.dcm", vols)  # segment T1DUAL -o out.seg.dcm
    assert "_e1_" in one and "_e2_" in two
    # each echo references its own instances (for RTSTRUCT/SEG)
    assert not set(vols[0]._dicom_ref.sop_instance_uids) & set(vols[1]._dicom_ref.sop_instance_uids)


# ------------------------------------------------------------------ DICOM beside NIfTI; links
def test_folder_with_dicom_and_nifti_drops_neither(series, chaos_dir):
    from napari_gi_seg.engine.batch import find_scans

    shutil.copy(chaos_dir / "image_2.nii.gz", series / "image_2.nii.gz")
    shutil.copy(chaos_dir / "label_2.nii.gz", series / "label_2.nii.gz")
    with pytest.warns(UserWarning, match="label_2.nii.gz"):  # labels beside the series: named, not read as images
        vols = read_image(series)
    assert [v.metadata["format"] for v in vols] == ["dicom", "nifti"]
    assert vols[1].shape == read_nifti(chaos_dir / "image_2.nii.gz").shape
    assert find_scans(series) == [series]
    with pytest.warns(UserWarning, match="label_2.nii.gz"):
        layers = napari_get_reader(str(series))(str(series))  # what napari does with the dropped folder
    assert [t[2] for t in layers] == ["image", "image"] and len({t[1]["name"] for t in layers}) == 2


def test_symlink_loop_and_alias_give_no_duplicates(tmp_path, t2spir_p2):
    from napari_gi_seg.engine.batch import find_scans

    root = tmp_path / "in"
    a = Path(shutil.copytree(t2spir_p2, root / "seriesA"))
    os.symlink(".", root / "loop")
    os.symlink("seriesA", root / "alias")
    os.symlink(".", a / "loop")
    first = _files(a)[0]
    os.symlink(first.name, a / "same_file_again.dcm")  # one file under two names
    assert find_scans(root) == [a]
    for target in (root, a, root / "alias"):
        [vol] = read_image(target)
        assert vol.shape == (26, 320, 320)


# ------------------------------------------------------------------ NIfTI: gzip integrity
def _flip_inside_deflate(src: Path, dst: Path) -> None:
    """``src`` with one bit flipped in its compressed data such that the deflate stream
    still decodes (only the CRC-32 can tell)."""
    raw = bytearray(src.read_bytes())
    good = gzip.decompress(bytes(raw))
    start = 10 + (raw[3] & 8 and raw[10:].index(0) + 1)  # after the header (and the file name, if any)
    for k in range(len(raw) // 2, len(raw) - 8, 997):
        for bit in range(8):
            raw[k] ^= 1 << bit
            try:
                d = zlib.decompressobj(-zlib.MAX_WBITS)
                out = d.decompress(bytes(raw[start:-8]))
                if d.eof and len(out) == len(good) and out != good:
                    dst.write_bytes(bytes(raw))
                    return
            except zlib.error:
                pass
            raw[k] ^= 1 << bit
    pytest.fail("found no bit flip that keeps the deflate stream valid")


def test_gzip_crc_is_verified(tmp_path, chaos_dir):
    bad = tmp_path / "flipped.nii.gz"
    _flip_inside_deflate(chaos_dir / "image_2.nii.gz", bad)
    with pytest.raises(InvalidInputError, match="CRC") as ei:
        read_nifti(bad)
    assert str(bad) in str(ei.value)


def test_corrupt_gzip_stream_is_reported_as_such(tmp_path, chaos_dir):
    raw = bytearray((chaos_dir / "image_2.nii.gz").read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InvalidInputError, match="gzip") as ei:  # deflate rarely notices: the CRC does
        read_nifti(bad)
    assert str(bad) in str(ei.value) and "NaN" not in str(ei.value)


# ------------------------------------------------------------------ NIfTI: geometry fields
def test_qform_sform_disagreement_is_warned(tmp_path, chaos_dir):
    from napari_gi_seg.io.nifti import NiftiGeometryWarning

    src = chaos_dir / "image_2.nii.gz"
    img = nib.load(src)
    sform = img.header.get_sform().copy()
    sform[:3, 3] += [30.0, 40.0, 0.0]  # 50 mm away from the qform
    img.set_sform(sform, code=1)
    img.set_qform(nib.load(src).header.get_qform(), code=1)
    p = tmp_path / "two_forms.nii.gz"
    nib.save(img, p)
    with pytest.warns(NiftiGeometryWarning, match=r"50\.0 mm.*using the sform") as rec:
        vol = read_nifti(p)
    assert str(p) in str(rec[0].message)
    np.testing.assert_allclose(vol.affine, sform, atol=1e-4)  # the documented choice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nifti(src)  # the real file (both forms agree): no warning


@pytest.mark.parametrize(("code", "factor"), [(3, 1000.0), (1, 0.001)], ids=["micron", "metre"])
def test_xyzt_units_are_honoured(tmp_path, chaos_dir, code, factor):
    src = chaos_dir / "image_2.nii.gz"
    ref = read_nifti(src)
    raw = gzip.decompress(src.read_bytes())
    hdr = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    hdr["xyzt_units"] = code | (int(hdr["xyzt_units"]) & 0x38)
    hdr["pixdim"][1:4] = hdr["pixdim"][1:4] * factor
    for k in ("srow_x", "srow_y", "srow_z"):
        hdr[k] = hdr[k] * factor
    hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = (
        hdr[q] * factor for q in ("qoffset_x", "qoffset_y", "qoffset_z")
    )
    p = tmp_path / "units.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + raw[348:], 1))
    vol = read_nifti(p)
    np.testing.assert_allclose(vol.spacing_mm, ref.spacing_mm, rtol=1e-5)
    np.testing.assert_allclose(vol.affine, ref.affine, rtol=1e-4, atol=1e-3)
    assert vol.metadata["spatial_units"] == {3: "micron", 1: "meter"}[code]


def test_rgb_nifti_is_a_clear_error(tmp_path, chaos_volume, capsys):
    grey = np.clip(chaos_volume.data[:4] / chaos_volume.data.max() * 255, 0, 255).astype(np.uint8)
    rgb = np.zeros(grey.T.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = grey.T
    p = tmp_path / "colour.nii.gz"
    nib.save(nib.Nifti1Image(rgb, chaos_volume.affine), p)
    with pytest.raises(InvalidInputError, match="RGB") as ei:
        read_image(p)
    assert str(p) in str(ei.value)
    with pytest.raises(InvalidInputError, match="RGB"):  # what napari calls: a message, not a TypeError
        napari_get_reader(str(p))(str(p))
    rc, err = _cli(["segment", str(p), "-o", str(tmp_path / "o.nii.gz")], capsys)
    assert rc == 2 and len(err) == 1 and "internal error" not in err[0] and "colour.nii.gz" in err[0]


def test_newline_in_a_file_name_does_not_cut_the_message(tmp_path, chaos_image_path, capsys):
    p = tmp_path / "scan\nforged: ok.nii.gz"
    p.write_bytes(chaos_image_path.read_bytes()[:5000])  # truncated: an error that names the file
    rc, err = _cli(["segment", str(p), "-o", str(tmp_path / "o.nii.gz")], capsys)
    assert rc == 2 and len(err) == 1
    assert "scan\\nforged: ok.nii.gz: cannot read NIfTI (truncated" in err[0]  # the whole name, escaped


# ------------------------------------------------------------------ engine guard: the resampled grid
def _pixels_40mm(src: Path, dst: Path) -> Path:
    """The real image with 40 mm pixels in-plane (header, qform and sform agree)."""
    img = nib.load(src)
    aff = img.affine.copy()
    aff[:3, :2] *= 40.0 / np.linalg.norm(aff[:3, :2], axis=0)
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff)
    out.set_qform(aff, code=1)
    nib.save(out, dst)
    return dst


def test_engine_refuses_a_huge_resampled_grid_before_allocating(tmp_path, chaos_image_path, tiny_model, monkeypatch):
    from napari_gi_seg.engine import inference

    p = _pixels_40mm(chaos_image_path, tmp_path / "pixels_40mm.nii.gz")
    vol = read_nifti(p)  # passes the reader: 256 x 256 x 37 voxels is small
    assert vol.spacing_mm[1:] == (40.0, 40.0)

    def no_allocation(*a, **k):
        raise AssertionError("the engine allocated before refusing")

    monkeypatch.setattr(inference, "normalise_intensity", no_allocation)
    side = round(256 * 40.0 / tiny_model.spec.frame.spacing_mm[0])  # the slice resampled to the model's spacing
    with pytest.raises(InvalidInputError, match=rf"to {side} x {side} pixels") as ei:
        inference.segment_volume(vol, tiny_model.spec, tiny_model.network(), device="cpu")
    assert str(p) in str(ei.value) and "NAPARI_GI_SEG_MAX_ENGINE_BYTES" in str(ei.value)


def test_engine_guard_from_the_cli(tmp_path, chaos_image_path, capsys):
    p = _pixels_40mm(chaos_image_path, tmp_path / "pixels_40mm.nii.gz")
    rc, err = _cli(["segment", str(p), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"], capsys)  # bundled model
    assert rc == 2 and len(err) == 1 and "pixels_40mm.nii.gz" in err[0] and "GiB" in err[0]
    assert not (tmp_path / "o.nii.gz").exists()
