"""The one exception type users see: a one-line message that names the fix."""


class BertforgeError(Exception):
    """A problem with the user's input or environment, reported as one line (no traceback).

    The message must say what is wrong *and* what to change: the config key, the file, or the
    allowed values. Entry points print it to stderr and exit with status 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(BertforgeError):
    """An invalid configuration value or combination."""


class DataError(BertforgeError):
    """Input data that cannot be used as it is (missing, empty, wrong encoding or columns)."""


class TrainingDivergedError(BertforgeError):
    """The loss became NaN or infinite."""
