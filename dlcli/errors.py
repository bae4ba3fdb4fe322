"""Errors a user can act on. The CLI turns each into one clear line, never a traceback."""


class DlcliError(Exception):
    """Something about the user's input or run; `exit_code` follows Click (2 = bad input)."""

    exit_code = 1


class SpecError(DlcliError):
    """A spec that does not validate: always names the file, the line and the field."""

    exit_code = 2

    def __init__(self, message, file=None, line=None, column=None):
        self.message, self.file, self.line, self.column = message, file, line, column
        super().__init__(str(self))

    def __str__(self):
        return f"{location(self.file, self.line, self.column)}: {self.message}"


def location(file, line=None, column=None):
    """`file:line:column` as editors take it (the parts known)."""
    where = file or "<spec>"
    if line is not None:
        where += f":{line}"
        if column is not None:
            where += f":{column}"
    return where


class DataError(DlcliError):
    """A data file that is missing, unreadable or does not fit the model."""

    exit_code = 2


class ShapeError(DlcliError):
    """A layer that cannot take the shape its predecessor gives it."""

    exit_code = 2


class CheckpointError(DlcliError):
    """A checkpoint that is missing, corrupt, or does not match its spec."""

    exit_code = 2


class OutputError(DlcliError):
    """An output the user asked for (--log, -o) that cannot or must not be written: an
    existing run's checkpoint, a symlink, a device; found before the run starts."""

    exit_code = 2


class SettingError(DlcliError):
    """An environment variable dlcli reads holds a value it does not take."""

    exit_code = 2


class TrainingDiverged(DlcliError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


class ExportError(DlcliError):
    """A checkpoint that cannot become an ONNX model: a layer without a mapping, a bad
    opset, or the onnx package missing."""

    exit_code = 2


class ResourceError(DlcliError):
    """A spec that asks for more memory than the machine has, found before allocating it."""

    exit_code = 2
