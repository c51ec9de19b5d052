"""The CHAOS MR layout as the organisers ship it (original DICOM + ground-truth PNGs).

Layout (``CHAOS_Train_Sets/Train_Sets/MR``, or the folder holding it as ``MR/``)::

    <root>/<patient>/T2SPIR/DICOM_anon/IMG-<s>-<n>.dcm       T2-SPIR
    <root>/<patient>/T2SPIR/Ground/IMG-<s>-<n>.png           its labels, same name
    <root>/<patient>/T1DUAL/DICOM_anon/InPhase/*.dcm         T1 in-phase
    <root>/<patient>/T1DUAL/DICOM_anon/OutPhase/*.dcm        T1 opposed-phase
    <root>/<patient>/T1DUAL/Ground/*.png                     labels of both T1 phases

* **Cases** are one contrast of one patient (``case_id = "<patient>_<sequence>"``,
  e.g. ``"1_t2spir"``, ``"1_t1in"``, ``"1_t1out"``); the **group** is the patient, so
  every split (validation, folds, fine-tune hold-back) keeps a patient's three
  contrasts on the same side. ``sequences=`` picks the contrasts
  (:data:`CHAOS_SEQUENCES`, default all three).
* **Labels** are mapped by name from the Ground PNG values (:data:`CHAOS_MR_VALUES`:
  63 liver, 126 right kidney, 189 left kidney, 252 spleen; Kavur et al. 2021 and the
  organisers' evaluation kit, which accepts each value within a band:
  :data:`CHAOS_MR_BANDS`). ``class_names=`` selects and orders the classes; a name the
  layout lacks is an error.
* **Pairing**: the PNG of a DICOM image has the image's file name, except the T1
  opposed-phase images, which are numbered odd and pair with the PNG of the next
  number (``IMG-s-n.dcm`` -> ``IMG-s-(n+1).png``, same zero padding). Pixel ``(r, c)``
  of the PNG is pixel ``(r, c)`` of the DICOM ``PixelData``.
* **Shared SeriesInstanceUID**: the two T1 phases of a patient carry one
  ``SeriesInstanceUID`` (only ``EchoTime`` and the folder tell them apart), so each
  phase folder is read on its own with
  :func:`napari_gi_seg.io.dicom.read_dicom_folder`, never the ``T1DUAL`` folder.
* **Geometry** is the DICOM series' own (native matrix, pixel spacing, slice spacing,
  oblique orientation): the slice order of the labels is the reader's (by position
  along the slice normal), worked out here from the same headers.

Kavur A.E. et al., "CHAOS Challenge - combined (CT-MR) Healthy Abdominal Organ
Segmentation", Medical Image Analysis 69 (2021) 101950; data CC BY-SA 4.0 (Zenodo 3431873).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .case import Case, CaseRef, DatasetFormatError, SegDataset, _natural_key

#: Contrast name -> (DICOM folder, Ground folder, PNG number offset), relative to a patient folder.
CHAOS_SEQUENCES: dict[str, tuple[str, str, int]] = {
    "t2spir": ("T2SPIR/DICOM_anon", "T2SPIR/Ground", 0),
    "t1in": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground", 0),
    "t1out": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground", 1),
}
#: The CHAOS MR classes (in the bundled models' order) and their Ground PNG values.
CHAOS_MR_VALUES: dict[str, int] = {"liver": 63, "right_kidney": 126, "left_kidney": 189, "spleen": 252}
#: Value bands of the organisers' evaluation kit (``CHAOSmetrics``: liver 55-70, right
#: kidney 110-135, left kidney 175-200, spleen 240-255), inclusive.
CHAOS_MR_BANDS: dict[str, tuple[int, int]] = {
    "liver": (55, 70),
    "right_kidney": (110, 135),
    "left_kidney": (175, 200),
    "spleen": (240, 255),
}
_IMG = re.compile(r"^(?P<stem>.*?)(?P<num>\d+)$")


def chaos_root(root: str | Path) -> Path | None:
    """The folder holding the patient folders, or ``None`` when ``root`` is not a CHAOS
    MR layout: ``root`` itself, or ``root/MR`` (the zip's ``Train_Sets`` folder)."""
    root = Path(root)
    for cand in (root, root / "MR"):
        if cand.is_dir() and any(
            (p / "T2SPIR").is_dir() or (p / "T1DUAL").is_dir() for p in cand.iterdir() if p.is_dir()
        ):
            return cand
    return None


def parse_sequences(sequences: str | Sequence[str] | None) -> list[str]:
    """``"t2spir,t1in"`` or a list -> the validated list (default: all of :data:`CHAOS_SEQUENCES`).

    Raises
    ------
    DatasetFormatError
        An unknown contrast name, or none.
    """
    if sequences is None:
        return list(CHAOS_SEQUENCES)
    names = [s.strip().lower() for s in (sequences.split(",") if isinstance(sequences, str) else sequences)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in CHAOS_SEQUENCES]
    if bad or not names:
        raise DatasetFormatError(f"unknown CHAOS sequence(s) {bad or names}: choose from {', '.join(CHAOS_SEQUENCES)}")
    return list(dict.fromkeys(names))


def ground_png_name(dicom_name: str, offset: int = 0) -> str:
    """The Ground PNG name of a DICOM image name: ``IMG-0004-00001.dcm`` with offset 1
    (opposed phase) -> ``IMG-0004-00002.png``; the zero padding is kept.

    Raises ``DatasetFormatError`` when the name does not end in a number."""
    stem = Path(dicom_name).stem
    m = _IMG.match(stem)
    if m is None:
        raise DatasetFormatError(f"{dicom_name}: not a CHAOS image name (IMG-<series>-<number>.dcm)")
    num = m.group("num")
    return f"{m.group('stem')}{int(num) + offset:0{len(num)}d}.png"


def chaos_png_to_labels(png: np.ndarray, class_names: Sequence[str], source: str | Path = "") -> np.ndarray:
    """Ground PNG values -> label indices ``1..K`` in the order of ``class_names``.

    Parameters
    ----------
    png
        ``(y, x)`` or ``(z, y, x)`` uint8 Ground values (0 background, bands of
        :data:`CHAOS_MR_BANDS`).
    class_names
        Classes to keep, by name (a subset of :data:`CHAOS_MR_VALUES`); organs not listed
        become background.
    source
        File named in errors.

    Returns
    -------
    uint8 array of the same shape.

    Raises
    ------
    DatasetFormatError
        A value outside the background and the four bands, or an unknown class name.
    """
    unknown = [n for n in class_names if n not in CHAOS_MR_VALUES]
    if unknown:
        raise DatasetFormatError(f"{source}: the CHAOS MR labels are {list(CHAOS_MR_VALUES)}; unknown: {unknown}")
    a = np.asarray(png)
    out = np.zeros(a.shape, np.uint8)
    known = a == 0
    for name, (lo, hi) in CHAOS_MR_BANDS.items():
        m = (a >= lo) & (a <= hi)
        known |= m
        if name in class_names:
            out[m] = list(class_names).index(name) + 1
    if not known.all():
        bad = np.unique(a[~known])[:5].tolist()
        raise DatasetFormatError(f"{source}: Ground values {bad} are not CHAOS MR labels (0, 63, 126, 189, 252)")
    return out


def read_png_stack(paths: Sequence[Path]) -> np.ndarray:
    """``(z, y, x)`` uint8 stack of single-channel PNGs (in the given order).

    Raises ``DatasetFormatError`` naming a missing, unreadable, colour or differently
    sized file."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                a = np.asarray(im)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetFormatError(f"{p}: cannot read the label PNG ({e})") from e
        if a.ndim == 3:  # grey saved as RGB(A): all channels must agree
            if not (a[..., :3] == a[..., :1]).all():
                raise DatasetFormatError(f"{p}: a colour PNG; expected one grey channel of label values")
            a = a[..., 0]
        if out and a.shape != out[0].shape:
            raise DatasetFormatError(f"{p}: size {a.shape[::-1]} differs from {out[0].shape[::-1]} of {paths[0].name}")
        out.append(a.astype(np.uint8))
    return np.stack(out)


def dicom_slice_files(folder: Path) -> list[Path]:
    """The DICOM files of ``folder`` in the reader's slice order ``z`` (by position along
    the slice normal ``row cosine x column cosine``, as
    :func:`napari_gi_seg.io.dicom.read_dicom_folder` sorts them)."""
    import pydicom

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".dcm"), key=lambda p: p.name)
    pos = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        pos.append(float(np.cross(iop[:3], iop[3:]) @ np.array([float(v) for v in ds.ImagePositionPatient])))
    order = np.argsort(np.array(pos), kind="stable")
    return [files[i] for i in order]


def read_chaos_case(patient_dir: Path, sequence: str, class_names: Sequence[str]):
    """One contrast of one CHAOS patient: ``(Volume, labels)``.

    Returns the DICOM series as a :class:`~napari_gi_seg.io.volume.Volume` ``(z, y, x)``
    float32 (native geometry) and its ``(z, y, x)`` uint8 labels ``0..K`` in the order of
    ``class_names``.

    Raises
    ------
    DatasetFormatError
        A missing folder or PNG, a PNG whose size differs from the image, unreadable DICOM.
    """
    from ..io.dicom import read_dicom_folder

    dcm_rel, ground_rel, offset = CHAOS_SEQUENCES[sequence]
    dcm_dir, ground = patient_dir / dcm_rel, patient_dir / ground_rel
    if not dcm_dir.is_dir():
        raise DatasetFormatError(f"{dcm_dir}: missing (CHAOS {sequence} DICOM folder)")
    try:
        vols = read_dicom_folder(dcm_dir)
    except ValueError as e:  # InvalidInputError names the folder
        raise DatasetFormatError(str(e)) from e
    if len(vols) != 1:
        raise DatasetFormatError(f"{dcm_dir}: {len(vols)} series; expected one per CHAOS contrast folder")
    vol = vols[0]
    files = dicom_slice_files(dcm_dir)
    pngs = [ground / ground_png_name(f.name, offset) for f in files]
    missing = [p.name for p in pngs if not p.is_file()]
    if missing:
        raise DatasetFormatError(f"{ground}: missing label PNG(s) {missing[:3]} for {dcm_dir.name} images")
    if len(files) != vol.shape[0]:
        raise DatasetFormatError(f"{dcm_dir}: {len(files)} .dcm files but the series has {vol.shape[0]} slices")
    raw = read_png_stack(pngs)
    if raw.shape != vol.shape:
        raise DatasetFormatError(f"{ground}: label PNGs {raw.shape[1:]} do not match the images {vol.shape[1:]}")
    return vol, chaos_png_to_labels(raw, class_names, ground)


def open_chaos(
    root: str | Path, class_names: Sequence[str] | None = None, sequences: str | Sequence[str] | None = None
) -> SegDataset:
    """Open the CHAOS MR layout (module docstring).

    Parameters
    ----------
    root
        The ``MR`` folder (patient folders inside) or the folder holding ``MR/``.
    class_names
        Classes by name, in label order; default :data:`CHAOS_MR_VALUES` order
        (liver, right_kidney, left_kidney, spleen).
    sequences
        Contrasts (``"t2spir,t1in,t1out"`` or a list; default all). A patient without a
        contrast's folder simply has no case of it.

    Returns
    -------
    SegDataset
        ``layout = "chaos"``; cases ``"<patient>_<sequence>"`` grouped by patient;
        ``extra = {"sequences": [...]}``. Each case's ``load()`` reads the DICOM series
        and its PNGs (:func:`read_chaos_case`).

    Raises
    ------
    DatasetFormatError
        Not a CHAOS layout, unknown sequences or class names, no case found.
    """
    base = chaos_root(root)
    if base is None:
        raise DatasetFormatError(f"{root}: not a CHAOS MR folder (<patient>/T2SPIR, <patient>/T1DUAL)")
    seqs = parse_sequences(sequences)
    names = list(class_names) if class_names else list(CHAOS_MR_VALUES)
    unknown = [n for n in names if n not in CHAOS_MR_VALUES]
    if unknown:
        raise DatasetFormatError(f"{base}: the CHAOS MR classes are {list(CHAOS_MR_VALUES)}; unknown: {unknown}")

    def loader(pdir: Path, seq: str):
        def load() -> Case:
            vol, lab = read_chaos_case(pdir, seq, names)
            return Case(f"{pdir.name}_{seq}", pdir.name, vol, lab)

        return load

    cases = []
    for pdir in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
        for seq in seqs:
            if (pdir / CHAOS_SEQUENCES[seq][0]).is_dir():
                cases.append(CaseRef(f"{pdir.name}_{seq}", pdir.name, loader(pdir, seq)))
    if not cases:
        raise DatasetFormatError(f"{base}: no patient folder holds the CHAOS sequence(s) {seqs}")
    return SegDataset(base, "chaos", names, cases, extra={"sequences": seqs})


def case_sequence(case_id: str) -> str | None:
    """The contrast of a CHAOS case id (``"1_t1out"`` -> ``"t1out"``), ``None`` for other ids."""
    tail = str(case_id).rsplit("_", 1)[-1]
    return tail if tail in CHAOS_SEQUENCES else None
