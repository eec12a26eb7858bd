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


class BlobError(ConfigError, ValueError):
    """A blob shape that cannot be (a negative dimension), or a stored blob
    (BlobProto) whose values do not fit its shape.  The caller that knows
    the layer and the file re-raises it with them: ``err.message`` is the
    bare reason.  A ValueError too, as Blob's shape errors always were."""


class AllocationError(DLTrainError, MemoryError):
    """Memory for a blob that this machine cannot provide.  The message
    names the size and the shape; the net adds the layer."""


class Interrupted(KeyboardInterrupt):
    """The user's Ctrl-C, raised by dltrain's SIGINT handler.  Unlike a
    KeyboardInterrupt that a layer's own code raises (a failure of that
    layer), it always passes through untouched."""


def require_module(module, what, package, extra, error=DLTrainError):
    """``import module`` for an optional extra, or one line naming what to install:
    "<what> needs <package>: pip install 'dltrain[<extra>]'"."""
    import importlib
    try:
        importlib.import_module(module.partition(".")[0])     # the package first: a cached submodule
        return importlib.import_module(module)                 # would hide a package made unimportable
    except ImportError:
        raise error(f"{what} needs {package}: pip install 'dltrain[{extra}]'") from None
