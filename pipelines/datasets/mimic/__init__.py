"""MIMIC-IV-MM: one sample per admission from MIMIC-IV, MIMIC-CXR-JPG and MIMIC-IV-Note (first 48 h only).

``build`` composes the rest: ``sources`` (locating and streaming the credentialed tables), ``cohort`` (labels),
``media`` (X-rays and notes), ``timeseries`` (the 48 h grids), ``variables`` (the editable CSV lists in
``variables/``) and ``summary`` (the cohort summary written beside the manifest).
"""

from .build import build_mimic_iv_mm

__all__ = ["build_mimic_iv_mm"]
