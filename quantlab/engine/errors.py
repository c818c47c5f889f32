"""User-facing errors: reported as one line naming the file, key or tensor at fault."""


class QuantlabError(Exception):
    """An error caused by input (config, data, checkpoint) rather than a bug."""


class ConfigError(QuantlabError):
    """An unknown or mistyped config key, or an unreadable config file."""


class DataError(QuantlabError):
    """A dataset file that is missing or malformed."""


class CheckpointError(QuantlabError):
    """A checkpoint that cannot be read or does not match the network."""


class TrainingError(QuantlabError):
    """Training cannot continue, e.g. a non-finite loss."""
