"""X-ray reader for the image encoders.

The decoder itself is :mod:`adacomed.cache_schema.raw_images`: both stages read the same manifest pointers, so
the large encoders here and the small model's prepared inputs in ``train`` decode the same pixels.
"""

from ...cache_schema.raw_images import dicom_grey_to_uint8, grey_to_rgb, is_dicom, read_xray, scale_to_uint8

__all__ = ["dicom_grey_to_uint8", "grey_to_rgb", "is_dicom", "read_xray", "scale_to_uint8"]
