"""User-facing errors.

Everything a user can get wrong (a bad model, a bad flag, an infeasible plan, a
bad device file) raises a subclass of :class:`OnnxSplitError`. The CLI turns
these into one line on stderr and exit code 1; any other exception is a bug.
"""

from __future__ import annotations


class OnnxSplitError(Exception):
    """Base class of every error caused by the user's input."""


class ModelError(OnnxSplitError):
    """The model file is missing, unreadable, not ONNX, or not a DAG."""


class PlanError(OnnxSplitError):
    """A plan is malformed, names unknown nodes, or makes stages feed each other."""


class InfeasibleError(OnnxSplitError):
    """No placement satisfies the devices' memory or capability limits."""


class DeviceSpecError(OnnxSplitError):
    """A device description is malformed."""


class UsageError(OnnxSplitError):
    """A command-line flag or argument is wrong."""


class OutputError(OnnxSplitError):
    """An output path cannot be written: it holds files onnxsplit did not write, is not a folder, or is not writable."""


class OutputExists(UsageError):
    """The output folder exists and replacing it was not asked for."""
