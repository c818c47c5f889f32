"""User-facing errors: reported as one line naming the file, key or tensor at fault."""


class QuantlabError(Exception):
    """An error caused by input (config, data, checkpoint) rather than a bug.

    `shared` marks an error every rank raised alike (a config value, a verdict rank 0
    broadcast): rank 0 reports it and the other ranks end quietly, so it is printed once.
    """
    shared = False


class ConfigError(QuantlabError):
    """An unknown, mistyped or out-of-range config key, or an unreadable config file."""
    shared = True  # the same files and arguments on every rank


class DataError(QuantlabError):
    """A dataset file that is missing or malformed."""


class CheckpointError(QuantlabError):
    """A checkpoint that cannot be read or does not match the network."""


class TrainingError(QuantlabError):
    """Training cannot continue, e.g. a non-finite loss or a diverged model."""


class SchedulerError(QuantlabError):
    """The cluster scheduler (Slurm) cannot be reached or refused a request."""


class ExperimentError(QuantlabError):
    """The experiment folder cannot be used: in use by another run, or not writable."""


def shared(error: QuantlabError) -> QuantlabError:
    """`error`, marked as raised alike on every rank."""
    error.shared = True
    return error
