"""Errors a user can fix. Stage entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class ConfigError(UserError):
    """A parameter in params.yaml is unknown, mistyped or out of range."""


class DataError(UserError):
    """Source data, prepared data or samples are missing or malformed."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not match the configuration."""


class TrackingError(UserError):
    """The MLflow tracking server or model registry cannot be reached or refused a request."""


class TrackingUnavailable(TrackingError):
    """The MLflow tracking server did not answer: the same call may succeed once it is back."""
