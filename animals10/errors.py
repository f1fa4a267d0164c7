"""Errors a user can cause. Each carries one sentence that names the problem and what to do."""


class Animals10Error(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""


class DataError(Animals10Error):
    """Missing, empty or unusable data."""


class StorageError(Animals10Error):
    """A path or bucket that cannot be read or written."""


class NotFoundError(StorageError):
    """A file or object that does not exist (any more)."""


class WeightsUnavailableError(Animals10Error):
    """Pretrained weights were asked for but cannot be had."""


class ArtifactError(Animals10Error):
    """A model artifact that is missing or malformed."""


class SettingsError(Animals10Error, ValueError):
    """Settings that cannot work together, such as an input size the chosen model cannot take."""
