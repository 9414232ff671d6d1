"""Function-granularity diff of two PE images: fingerprints, matching, classification."""

from hpatch.diff.fingerprint import FunctionFingerprint, fingerprint_function, fingerprint_image

__all__ = ["FunctionFingerprint", "fingerprint_function", "fingerprint_image"]
