"""The errors softprompt raises for a user's mistake. Each message names the problem and the fix.

They subclass ValueError (or OSError), so code that caught those before keeps working; the command line
prints them without a traceback.
"""


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the fix."""


class AdapterError(ValueError):
    """An adapter folder or file is missing, damaged or does not fit the model; the message says what to do."""


class DataError(ValueError):
    """Bad input data; the message names the file, row and column (or the setting that gave them)."""


class ModelNotFoundError(OSError):
    """The base model could not be found or loaded; the message says where we looked and what to do."""


class UnknownAdapterError(ValueError):
    """An adapter name that is not loaded; the message lists the loaded ones."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


USER_ERRORS = (ConfigError, AdapterError, DataError, ModelNotFoundError, UnknownAdapterError, TrainingDiverged)
