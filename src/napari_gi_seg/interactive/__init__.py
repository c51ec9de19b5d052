"""Prompted interactive segmentation of any structure (box, clicks, scribbles; in 2D and
through the stack), GUI-free: :class:`PromptSession` is the entry point of the napari
widget, the CLI and the benchmark."""

from .backends import RANDOM_WALKER, PromptModelBackend, RandomWalkerBackend, default_prompt_model_key, load_backend
from .clicks import clicks_to_reach, dice, next_click
from .encoding import SlicePrompts
from .session import PromptSession

__all__ = [
    "PromptSession",
    "SlicePrompts",
    "RandomWalkerBackend",
    "PromptModelBackend",
    "RANDOM_WALKER",
    "load_backend",
    "default_prompt_model_key",
    "next_click",
    "dice",
    "clicks_to_reach",
]
