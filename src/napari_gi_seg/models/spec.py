"""The model format: a JSON spec that fully describes how to use a safetensors file.

A model is a folder ``<name>/<version>/`` holding ``spec.json``, ``model.safetensors``
and optionally ``MODEL_CARD.md``, ``metrics.csv`` and ``training_curve.png``.
Weights are never unpickled: ``.pt``/``.pth`` files are refused
(:func:`napari_gi_seg.models.network.load_weights`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

SPEC_FORMAT_VERSION = 2
#: Field of view (mm, square) of the CHAOS NIfTI files the bundled model was trained on
#: (256 x 256 pixels of 1.25 mm): the default frame of format-1 specs (see :class:`ModelFrame`).
CHAOS_FOV_MM = 320.0
#: Orientation axis codes of the CHAOS NIfTI files, nibabel voxel-axis order (x, y, z).
CHAOS_AXCODES = ("L", "A", "S")
_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})
#: segmentation-models-pytorch architectures (``encoder`` is an smp encoder name).
SMP_ARCHITECTURES = ("Unet", "UnetPlusPlus", "DeepLabV3", "DeepLabV3Plus", "FPN")
#: MONAI networks (``encoder`` names a preset: its constructor arguments are fixed in
#: :data:`napari_gi_seg.models.network.MONAI_PRESETS`, so a spec file never carries
#: free-form arguments). Input height and width must be multiples of 16 (4 poolings).
#: MONAI networks as fixed presets (the spec's ``encoder`` names the preset; the first
#: is the default). ``16-256-res2-batch`` normalises with batch norm, whose running
#: statistics make the output independent of the slice's field of view; the
#: instance-norm ``16-256-res2`` is kept so that models trained with it still load.
MONAI_ARCHITECTURES = {
    "monai.UNet": ("16-256-res2-batch", "16-256-res2", "16-256-res1-batch", "16-256-res1-instance"),
    "monai.DynUNet": ("16-256-instance",),
}
#: Networks built in :mod:`napari_gi_seg.models.zoo` from library parts and the blocks no
#: library has, with the encoders (or presets) each accepts: torchvision's FCN-ResNet50
#: (``"resnet50"``), smp U-Net++ on a ResNet with a bottleneck context block (any smp
#: ``resnet*`` encoder), a U-Net of inception blocks (preset ``"16-256"``).
ZOO_ARCHITECTURES = {
    "torchvision.FCN": ("resnet50",),
    "ResUnetPlusPlus": ("resnet18", "resnet34", "resnet50"),
    "InceptionUnet": ("16-256",),
}
ARCHITECTURES = SMP_ARCHITECTURES + tuple(MONAI_ARCHITECTURES) + tuple(ZOO_ARCHITECTURES)
#: The architecture ``train`` uses unless told otherwise (chosen by the peer table in
#: docs/benchmarks.md, ``benchmarks/peer_training.py``).
DEFAULT_ARCH = "monai.UNet"
NORMALISATIONS = ("percentile", "zscore")
ACTIVATIONS = ("softmax", "sigmoid")
#: What a left-right flip does to lateralised classes (:attr:`ModelSpec.flip_labels`).
FLIP_LABELS = ("swap", "keep")
#: What a model does (:attr:`ModelSpec.kind`): ``"semantic"`` segments fixed classes
#: (the engine's models); ``"promptable"`` segments one object a user points at with a
#: box, clicks or scribbles (:mod:`napari_gi_seg.interactive`), whatever its class.
MODEL_KINDS = ("semantic", "promptable")
#: Prompt input channels a promptable model may name, in the order they follow the
#: image channels (:mod:`napari_gi_seg.interactive.encoding`).
PROMPT_CHANNELS = ("box", "positive", "negative", "previous_mask")

# Distinct colours (RGB hex) used when a spec gives none; index 0 is background.
DEFAULT_COLOURS = (
    "#000000",
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
)


def mirror_pairs(names: list[str]) -> dict[str, str]:
    """Pairs of class names that differ only by left/right.

    Tokens ``left``/``right`` and ``l``/``r`` (any case, separated by ``_``, ``-`` or a
    space) are recognised, e.g. ``left_kidney`` <-> ``right_kidney``.

    Parameters
    ----------
    names : list of str
        Class names.

    Returns
    -------
    dict
        ``{"left_kidney": "right_kidney", "right_kidney": "left_kidney"}``; names
        without a mirror are absent.
    """
    import re

    def key(n):
        return re.sub(r"(?i)(^|[_\- ])(left|right|l|r)($|[_\- ])", r"\1@\3", n)

    out = {}
    for a in names:
        for b in names:
            if a != b and key(a) == key(b) and "@" in key(a):
                out[a] = b
    return out


#: Model names (registry folder names): a letter or digit, then up to 63 letters,
#: digits, ``.``, ``_`` or ``-``. No path separators, no leading dot, never empty.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_ENCODER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Bounds of the sizes a spec may ask for.
INPUT_SIZE_RANGE = (8, 4096)
MAX_CONTEXT = 15
MAX_CONTEXT_OFFSET = 64
MAX_CLASSES = 254
MAX_VERSION = 1_000_000


def validate_model_name(name: object) -> str:
    """Return ``name`` if it matches :data:`MODEL_NAME_PATTERN`.

    Raises
    ------
    ValueError
        Naming the bad name and the pattern (``'../../escaped'``, ``'a/b'``, ``''``).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no leading '.')"
        )
    return name


@dataclass
class ClassInfo:
    """One output class.

    ``index`` is the label value in the label volume (0 is background and is not
    listed for softmax models). ``colour`` is an RGB hex string for display.
    ``mirror`` names the class a left-right flip turns this one into (flip TTA and
    flip augmentation swap the two). ``single_component``: the organ is one
    connected object (liver, kidney, spleen; not bowel), so post-processing keeps only
    its largest 3D connected component (nnU-Net's post-processing, Isensee et al. 2021).
    """

    index: int
    name: str
    colour: str = ""
    mirror: str | None = None
    single_component: bool = False


@dataclass
class ModelFrame:
    """The geometric frame a model works in, and the range of inputs it was trained on.

    Attributes
    ----------
    axcodes
        Orientation axis codes of the training data in **nibabel's voxel-axis order
        (x, y, z)** = (column, row, slice), i.e. ``nibabel.aff2axcodes`` of a NIfTI file
        holding the training array: ``("L", "A", "S")`` means columns run toward the
        patient's Left, rows toward Anterior, slices toward Superior. In the project's
        ``(z, y, x)`` array order the same frame reads ``("S", "A", "L")``. The engine
        reorients every input into this frame before the network
        (:func:`napari_gi_seg.io.orientation.frame_map`).
    spacing_mm
        In-plane target pixel spacing ``(y, x)`` in mm: each slice is resampled to it
        (keeping the aspect ratio), then padded to ``input_size`` (or to the next
        multiple of 32 when larger) for the network.
    spacing_range_mm
        ``{"z": [min, max], "y": [...], "x": [...]}`` voxel spacing (mm) of the
        training volumes in this frame, or ``None`` (unknown: not checked).
    fov_range_mm
        ``{"y": [min, max], "x": [min, max]}`` in-plane field of view (mm) of the
        training volumes in this frame, or ``None``.
    intensity_range
        ``{"p25": [min, max], "p50": [...], "p75": [...]}``: per training volume, the
        25th/50th/75th percentile of the percentile-normalised intensity of its body
        voxels (normalised value > 0.05), or ``None``
        (:func:`napari_gi_seg.engine.domain.intensity_profile`).

    The default (and the frame of every format-1 spec) is the frame of the CHAOS
    NIfTI files the bundled model saw: ``("L", "A", "S")`` and a 320 mm field of view
    over ``input_size`` pixels (2.0 mm for 160 px), ranges unknown.
    """

    axcodes: tuple[str, str, str] = CHAOS_AXCODES
    spacing_mm: tuple[float, float] = (2.0, 2.0)
    spacing_range_mm: dict[str, list[float]] | None = None
    fov_range_mm: dict[str, list[float]] | None = None
    intensity_range: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        self.axcodes = tuple(str(a).upper() for a in self.axcodes)  # type: ignore[assignment]
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        pairs = [next((i for i, p in enumerate(_AXIS_PAIRS) if a in p), -1) for a in self.axcodes]
        if sorted(pairs) != [0, 1, 2]:
            raise InputError(f"frame axcodes {self.axcodes} must name one of L/R, A/P and S/I each")
        if len(self.spacing_mm) != 2 or min(self.spacing_mm) <= 0:
            raise InputError(f"frame spacing_mm {self.spacing_mm} must be 2 positive numbers (y, x)")
        for name in ("spacing_range_mm", "fov_range_mm", "intensity_range"):
            rng = getattr(self, name)
            if rng is None:
                continue
            if not isinstance(rng, dict) or any(len(v) != 2 or float(v[0]) > float(v[1]) for v in rng.values()):
                raise InputError(f"frame {name} must map names to [min, max], got {rng!r}")
            setattr(self, name, {k: [float(v[0]), float(v[1])] for k, v in rng.items()})

    @classmethod
    def chaos_default(cls, input_size: tuple[int, int]) -> ModelFrame:
        """The documented default frame: CHAOS orientation, 320 mm over ``input_size`` pixels."""
        return cls(CHAOS_AXCODES, (CHAOS_FOV_MM / int(input_size[0]), CHAOS_FOV_MM / int(input_size[1])))


@dataclass
class ModelSpec:
    """How to build, feed and read a segmentation network.

    Attributes
    ----------
    name, version:
        Registry key; ``version`` is an integer >= 1.
    architecture, encoder:
        segmentation-models-pytorch class name and encoder name (any smp encoder), or a
        MONAI network (``"monai.UNet"``, ``"monai.DynUNet"``) and the name of one of its
        presets (:data:`MONAI_ARCHITECTURES`). Weights always come from the safetensors file.
    context_offsets
        2.5D input: slice offsets relative to the target slice, e.g. ``(-1, 0, 1)``;
        neighbours beyond the first/last slice are clamped to the edge slice.
        The number of input channels is ``len(context_offsets)``.
    input_size
        ``(height, width)`` in pixels the network sees; each slice is resized to it
        (bilinear for images, nearest for labels) and the output is resized back.
    normalisation
        ``"percentile"``: per-volume clip to the ``percentiles`` (low, high) and scale
        to [0, 1]; ``"zscore"``: per-volume (x - mean) / std over voxels above the
        low percentile.
    classes
        Foreground classes, ``index`` 1..K for softmax models (label = argmax).
        For sigmoid (multi-label) models ``index`` is the channel + 1 and overlapping
        organs are flattened into one label volume by the order of ``classes``
        (later classes win).
    activation
        ``"softmax"`` (K+1 channels incl. background) or ``"sigmoid"`` (K channels).
    parent
        ``"name:version"`` of the model this one was fine-tuned from, or ``None``.
    data_fingerprint
        sha256 over the training cases' ids and label voxels (see training.datasets).
    metrics
        Free-form validation metrics, e.g. ``{"mean_dice": 0.91, "per_class": {...}}``.
    flip_augmented
        The network was trained with left-right flips (lateralised classes swapped with
        their mirror). Only then is flip test-time augmentation meaningful: a network
        that never saw a flipped abdomen (liver on the left) fails on one.
    flip_labels
        How lateralised classes were labelled on flipped training images, and so how a
        flipped prediction is mapped back (:meth:`mirror_permutation`). ``"swap"``
        (anatomical): a flip turns the right kidney into a left one, so laterality is
        the side of the image, which a CNN must learn from absolute position.
        ``"keep"`` (contextual): flipped images keep their labels, so the right kidney is
        the one beside the liver on either side; a flipped prediction needs no channel
        swap. Only meaningful with ``flip_augmented``.
    kind
        ``"semantic"`` (fixed classes, the engine's models) or ``"promptable"`` (one
        object per call, placed by a user's prompts; :data:`MODEL_KINDS`). Registry
        listings for segmentation show only semantic models
        (:func:`napari_gi_seg.models.registry.list_models`).
    prompt_channels
        Promptable models only: the prompt input channels after the image channels
        (names from :data:`PROMPT_CHANNELS`); the input has
        ``len(context_offsets) + len(prompt_channels)`` channels.
    prompt_encoding
        Promptable models only: how prompts become channels and where the crop lies
        (``crop_margin``, ``click_radius_px``, ``crop_percentiles``; see
        :mod:`napari_gi_seg.interactive.encoding`).
    frame
        The model's frame (:class:`ModelFrame`): orientation, in-plane target spacing and
        training ranges. ``None`` (the default when building a spec in code) becomes
        :meth:`ModelFrame.chaos_default` for ``input_size``; format-1 spec files, which
        have no frame, get the same default.
    weights_sha256
        sha256 (64 lower-case hex digits) of the registered ``model.safetensors``,
        recorded by :func:`~napari_gi_seg.models.registry.register_model` and checked
        by :func:`~napari_gi_seg.models.network.load_network` before the weights are
        used (a flipped byte is refused). ``""``: not recorded (specs written before
        it existed still load, unchecked).
    gate
        Two-stage empty-slice gating (:class:`~napari_gi_seg.models.zoo.GatedNetwork`):
        ``{"threshold": t}`` with ``0 < t < 1`` adds a slice classifier to any network;
        at inference the engine empties every slice whose probability of holding any
        class is below ``t``. ``{}`` (the default): no gate.
    """

    name: str
    version: int = 1
    architecture: str = "Unet"
    encoder: str = "efficientnet-b0"
    context_offsets: tuple[int, ...] = (-1, 0, 1)
    input_size: tuple[int, int] = (256, 256)
    normalisation: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    classes: list[ClassInfo] = field(default_factory=list)
    activation: str = "softmax"
    parent: str | None = None
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    created: str = ""
    software_version: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    flip_augmented: bool = False
    flip_labels: str = "swap"
    frame: ModelFrame | None = None
    weights_sha256: str = ""
    kind: str = "semantic"
    prompt_channels: tuple[str, ...] = ()
    prompt_encoding: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        try:
            self.context_offsets = tuple(int(o) for o in self.context_offsets)
        except (TypeError, ValueError):
            raise InputError(f"context_offsets must be a list of integers, got {self.context_offsets!r}") from None
        try:
            self.input_size = tuple(int(s) for s in self.input_size)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise InputError(f"input_size must be [height, width] integers, got {self.input_size!r}") from None
        try:
            self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise InputError(f"percentiles must be [low, high] numbers, got {self.percentiles!r}") from None
        if not isinstance(self.classes, (list, tuple)) or len(self.classes) > MAX_CLASSES:
            raise InputError(f"classes must be a list of at most {MAX_CLASSES} classes")
        try:
            self.classes = [c if isinstance(c, ClassInfo) else ClassInfo(**c) for c in self.classes]
        except TypeError as e:
            raise InputError(f"classes: each class needs index and name (and optional colour, mirror): {e}") from None
        try:
            self.prompt_channels = tuple(str(c) for c in self.prompt_channels)
        except TypeError:
            raise InputError(f"prompt_channels must be a list of names, got {self.prompt_channels!r}") from None
        if self.frame is None:
            self.frame = ModelFrame.chaos_default(tuple(max(1, v) for v in self.input_size))
        elif not isinstance(self.frame, ModelFrame):
            try:
                self.frame = ModelFrame(**self.frame)
            except TypeError as e:
                raise InputError(f"frame: {e}") from None
        for c in self.classes:
            if not c.colour:
                c.colour = DEFAULT_COLOURS[c.index % len(DEFAULT_COLOURS)] if c.index else DEFAULT_COLOURS[1]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when the spec is inconsistent or any
        size is out of bounds (:data:`MODEL_NAME_PATTERN`, :data:`INPUT_SIZE_RANGE`,
        :data:`MAX_CONTEXT`, :data:`MAX_CONTEXT_OFFSET`, :data:`MAX_CLASSES`): a spec is
        read from a file someone else may have written, and its sizes decide what is
        allocated (an ``input_size`` of 100000 x 100000 would ask for 120 GB)."""
        validate_model_name(self.name)
        if not isinstance(self.weights_sha256, str) or (
            self.weights_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256)
        ):
            raise InputError(f"weights_sha256 must be 64 lower-case hex digits or empty, got {self.weights_sha256!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or not 1 <= self.version <= MAX_VERSION:
            raise InputError(f"version must be an integer 1..{MAX_VERSION}, got {self.version!r}")
        lo, hi = INPUT_SIZE_RANGE
        if len(self.input_size) != 2 or not all(lo <= v <= hi for v in self.input_size):
            raise InputError(
                f"input_size must be [height, width] with each in {lo}..{hi} pixels, got {list(self.input_size)}"
            )
        if not 1 <= len(self.context_offsets) <= MAX_CONTEXT:
            raise InputError(f"context_offsets must hold 1..{MAX_CONTEXT} offsets, got {len(self.context_offsets)}")
        if any(abs(o) > MAX_CONTEXT_OFFSET for o in self.context_offsets):
            raise InputError(
                f"context_offsets must lie in -{MAX_CONTEXT_OFFSET}..{MAX_CONTEXT_OFFSET}, got {list(self.context_offsets)}"
            )
        if len(set(self.context_offsets)) != len(self.context_offsets):
            raise InputError(f"context_offsets must be distinct, got {list(self.context_offsets)}")
        if len(self.percentiles) != 2 or not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise InputError(
                f"percentiles must be [low, high] with 0 <= low < high <= 100, got {list(self.percentiles)}"
            )
        if not isinstance(self.encoder, str) or not _ENCODER_RE.match(self.encoder):
            raise InputError(f"encoder must be a segmentation-models-pytorch encoder name, got {self.encoder!r}")
        zoo = ZOO_ARCHITECTURES.get(self.architecture)
        if zoo is not None and self.encoder not in zoo:
            raise InputError(f"encoder of a {self.architecture} spec must be one of {zoo}, got {self.encoder!r}")
        if not isinstance(self.gate, dict) or set(self.gate) - {"threshold"}:
            raise InputError(f"gate must be {{}} or {{'threshold': t}}, got {self.gate!r}")
        if self.gate:
            t = self.gate.get("threshold")
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < float(t) < 1.0:
                raise InputError(f"gate threshold must be a number strictly between 0 and 1, got {t!r}")
        presets = MONAI_ARCHITECTURES.get(self.architecture)
        if presets is not None:
            if self.encoder not in presets:
                raise InputError(
                    f"encoder of a {self.architecture} spec must be one of its presets {presets}, got {self.encoder!r}"
                )
            if any(v % 16 for v in self.input_size):
                raise InputError(
                    f"input_size of a {self.architecture} spec must be multiples of 16, got {list(self.input_size)}"
                )
        if len(self.classes) > MAX_CLASSES:
            raise InputError(f"classes: at most {MAX_CLASSES} classes, got {len(self.classes)}")
        for c in self.classes:
            if not isinstance(c.name, str) or not 1 <= len(c.name) <= 64:
                raise InputError(f"classes: names must be 1..64 characters, got {c.name!r}")
            if not isinstance(c.index, int) or isinstance(c.index, bool):
                raise InputError(f"classes: index of {c.name!r} must be an integer, got {c.index!r}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation {self.normalisation!r} is not one of {NORMALISATIONS}")
        if self.flip_labels not in FLIP_LABELS:
            raise InputError(f"flip_labels {self.flip_labels!r} is not one of {FLIP_LABELS}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.kind not in MODEL_KINDS:
            raise InputError(f"kind {self.kind!r} is not one of {MODEL_KINDS}")
        bad = [c for c in self.prompt_channels if c not in PROMPT_CHANNELS]
        if bad or len(set(self.prompt_channels)) != len(self.prompt_channels):
            raise InputError(
                f"prompt_channels must be distinct names from {PROMPT_CHANNELS}, got {self.prompt_channels}"
            )
        if self.kind == "promptable":
            if not self.prompt_channels:
                raise InputError("a promptable model needs prompt_channels")
            if self.activation != "sigmoid" or len(self.classes) != 1:
                raise InputError("a promptable model has one sigmoid output (one class: the object)")
        elif self.prompt_channels:
            raise InputError("prompt_channels are for promptable models only (kind 'promptable')")
        if 0 not in self.context_offsets:
            raise InputError(f"context_offsets {self.context_offsets} must contain 0 (the target slice)")
        if not self.classes:
            raise InputError("a model needs at least one class")
        idx = [c.index for c in self.classes]
        if sorted(idx) != list(range(1, len(idx) + 1)):
            raise InputError(f"class indices must be 1..K, got {idx}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise InputError(f"class names must be unique, got {names}")
        for c in self.classes:
            if c.mirror is not None and c.mirror not in names:
                raise InputError(f"class {c.name!r} mirrors unknown class {c.mirror!r}")
        if int(self.format_version) > SPEC_FORMAT_VERSION:
            raise InputError(
                f"spec format {self.format_version} is newer than this napari-gi-seg reads "
                f"({SPEC_FORMAT_VERSION}); update napari-gi-seg"
            )

    # ------------------------------------------------------------------ derived
    @property
    def in_channels(self) -> int:
        """Number of network input channels: the 2.5D context slices, then the prompt
        channels of a promptable model."""
        return len(self.context_offsets) + len(self.prompt_channels)

    @property
    def out_channels(self) -> int:
        """Network output channels: K+1 for softmax, K for sigmoid."""
        return len(self.classes) + (1 if self.activation == "softmax" else 0)

    @property
    def class_names(self) -> dict[int, str]:
        """``{label value: name}`` including ``0: "background"``."""
        return {0: "background", **{c.index: c.name for c in self.classes}}

    @property
    def key(self) -> str:
        """``"name:version"``."""
        return f"{self.name}:{self.version}"

    def mirror_permutation(self) -> list[int]:
        """Output-channel permutation that undoes a left-right flip.

        ``perm[c]`` is the channel whose prediction on the flipped image belongs to
        channel ``c`` of the unflipped one. Identity for classes without ``mirror``, and
        for every class when ``flip_labels == "keep"``. Training (the flipped label
        map) and flip TTA both use it.
        """
        offset = 1 if self.activation == "softmax" else 0
        by_name = {c.name: c.index for c in self.classes}
        perm = list(range(self.out_channels))
        if self.flip_labels == "keep":  # contextual laterality: labels survive a flip
            return perm
        for c in self.classes:
            if c.mirror:
                perm[c.index - 1 + offset] = by_name[c.mirror] - 1 + offset
        return perm

    @property
    def has_lateral_classes(self) -> bool:
        """True when any class has a left/right mirror (flip augmentation then needs care)."""
        return any(c.mirror for c in self.classes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["context_offsets"] = list(self.context_offsets)
        d["input_size"] = list(self.input_size)
        d["percentiles"] = list(self.percentiles)
        d["prompt_channels"] = list(self.prompt_channels)
        if not self.gate:  # ungated specs stay readable by versions without the field
            d.pop("gate")
        d["frame"]["axcodes"] = list(self.frame.axcodes)
        d["frame"]["spacing_mm"] = list(self.frame.spacing_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Build a spec from parsed JSON; unknown keys raise ``ValueError``.

        Format 1 (no ``frame``) is upgraded to the current format with the documented
        default frame (:meth:`ModelFrame.chaos_default`).
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown spec fields: {sorted(unknown)}")
        d = dict(d)
        if int(d.get("format_version", 1)) < 2:
            if d.get("frame") is not None:
                raise InputError("a format-1 spec has no 'frame' field")
            d["format_version"] = SPEC_FORMAT_VERSION
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write the spec as indented JSON to ``path`` (atomically: temp file, rename)."""
        from .._atomic import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        """Read ``spec.json``; raises ``ValueError`` naming the file when it is invalid."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise InputError(f"{path}: invalid model spec: {e}") from e
