"""The errors dltrain raises on purpose: one base class, one for bad configs."""


class DLTrainError(Exception):
    """Base of every error dltrain raises about its input or its state."""


class ConfigError(DLTrainError):
    """Bad input: a config file, a layer definition, a weight file.

    ``str()`` reads ``path:line:col: message`` with whatever location parts
    are known, so the CLI can print it as one line.
    """

    def __init__(self, message, path=None, line=None, column=None, field=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.field = field

    def where(self):
        parts = [str(p) for p in (self.path, self.line, self.column) if p is not None]
        return ":".join(parts)

    def __str__(self):
        where = self.where()
        return f"{where}: {self.message}" if where else self.message
