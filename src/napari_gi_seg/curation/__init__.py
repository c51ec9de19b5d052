"""Curation: the clinician's stage of the road.

``corrections`` (the editing tools), ``review`` (per-slice review states and the
least-confident ranking), ``session`` (autosave and restore) and ``export`` (reviewed
corrections -> an nnU-Net-layout training dataset).
"""
