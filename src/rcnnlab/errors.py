"""The errors that mean "the input is wrong", as opposed to a bug.

Every check of a user's input (a config, a dataset file, a run folder, a checkpoint, a command
line option) raises a subclass of `UserError` whose message names the file, the record and the
fix. The CLI prints these as one line and exits with code 2; any other exception is a bug and
keeps its traceback. Each subclass also derives from the builtin it used to be (ValueError,
FileNotFoundError, RuntimeError), so `except ValueError` keeps working in user code.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input; the message says where and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config file, override or option value that cannot be used."""


class DatasetError(UserError, ValueError):
    """A dataset file (COCO json, image, YOLO / VOC / SVHN source) that cannot be used as it is."""


class RunError(UserError, ValueError):
    """A run folder or checkpoint that cannot be used for what was asked."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there."""


class DownloadError(UserError, RuntimeError):
    """Something to download (pretrained weights) cannot be fetched and is not cached."""


class DeviceError(UserError, RuntimeError):
    """The device asked for is not available."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite: the settings (learning rate, warm-up) do not suit."""
