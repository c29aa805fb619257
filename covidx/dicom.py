"""covidx.dicom: the DICOM reader, covidx.preprocessing.dicom, under its earlier import path (the
same module, not a copy: what is set on one is set on the other)."""
import sys

from .preprocessing import dicom

sys.modules[__name__] = dicom
