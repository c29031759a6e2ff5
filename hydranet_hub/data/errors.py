"""Exceptions raised by the MSD data pipeline."""


class DatasetError(ValueError):
    """An MSD task folder, its dataset.json or one of its NIfTI files is invalid.

    The message names the offending file or value and the fix.
    """


class CacheError(DatasetError):
    """A slice cache folder is missing, incomplete or inconsistent with its manifest.

    Rebuilding the cache with `build_slice_cache` fixes every case this error reports.
    """
