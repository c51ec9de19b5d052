"""Propagation: the previous day's labels carried onto today's scan by image registration.

On the road it sits beside the engine: it consumes image Volumes and label arrays (from
:mod:`napari_gi_seg.io`) and returns labels on today's grid, which the curation tools
then treat as predicted (not reviewed) slices. SimpleITK does the registration.
"""

from .propagate import (
    LabelsMismatchError,
    PropagationResult,
    check_labels_belong,
    default_settings,
    propagate,
    read_previous_labels,
    same_frame_of_reference,
)
from .registration import STAGES, RegistrationError, RegistrationSettings

__all__ = [
    "propagate",
    "PropagationResult",
    "LabelsMismatchError",
    "check_labels_belong",
    "read_previous_labels",
    "RegistrationSettings",
    "RegistrationError",
    "default_settings",
    "same_frame_of_reference",
    "STAGES",
]
