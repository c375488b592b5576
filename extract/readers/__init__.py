"""Input-reader registry: one file per input kind; one import line here registers it."""

from .base import InputReader, ReaderSpec, create_reader, get_reader_class, list_readers, register_reader

# isort: off
from . import xray  # noqa: F401  (xray: PNG/JPEG/DICOM radiographs)
from . import text  # noqa: F401  (text: notes and prompts held in the manifest)
from . import features  # noqa: F401  (features: .npy/.npz files or inline vectors)
from . import slide  # noqa: F401  (slide: whole-slide images, CLAM-compatible patches)
from . import clam_h5  # noqa: F401  (clam-h5: CLAM / TRIDENT patch-feature files)
from . import ct_volume  # noqa: F401  (ct-volume: NIfTI files and DICOM series folders)
from . import timeseries  # noqa: F401  (timeseries: .npz grids and long tables of EHR events)
# isort: on

__all__ = ["InputReader", "ReaderSpec", "create_reader", "get_reader_class", "list_readers", "register_reader"]
