"""Plugin layers: where they are found, the project config, and their errors.

A plugin is a Python module that registers layer types with
:func:`dlcore.register_layer` when it is imported.  dltrain finds plugins in
three places:

1. installed packages that declare an entry point in the ``dltrain.layers``
   group (``[project.entry-points."dltrain.layers"] gram = "dltrain_gram.layers"``);
   the value names a module, a ``module:function`` to call, or a
   ``module:Class`` (a Layer subclass, registered under the entry point's
   name if its module did not register it);
2. the ``plugins:`` list of the project config file, ``dltrain.yaml`` in the
   working directory or the file named with ``--config``.  A ``dltrain.yaml``
   found by itself in the working directory (not named with ``--config``)
   imports nothing unless ``DLTRAIN_ALLOW_PROJECT_PLUGINS=1`` is set: a
   downloaded folder must not run its code because dltrain was started in it.
   Its other keys apply; one warning line names the plugins left out;
3. ``--plugin MODULE`` on the command line (repeatable; a path to a ``.py``
   file works too).

A module named in 2 or 3 is imported from ``sys.path`` first, then from the
config file's folder (2) or the working directory (3).  A layer type that
is already registered (built in, or by another plugin) is an error naming
both.  The library (``dlcore.Net`` in a script) loads entry-point plugins
by itself the first time a net names a type that nothing registered.

Each plugin loaded is logged (one line: its module, where it was named, its
file).

The project config (YAML, read with ``safe_load`` within the limits of
:func:`dlcore.config.load_yaml_data`) has these keys, all optional; any
other key is an error:

``plugins``
    a list of plugin modules (or ``.py`` paths, relative to the file).
``log_dir``
    a folder; the CLI also writes its log there, in glog's naming
    (``dltrain.<host>.<user>.log.INFO.<date>-<time>.<pid>``, and the link
    ``dltrain.INFO`` to the latest), as Caffe does with ``GLOG_log_dir``.
    Relative to the config file's folder.
"""
import importlib
import importlib.machinery
import importlib.util
import os
import sys

from . import log
from .errors import ConfigError, DLTrainError, Interrupted

__all__ = ["ENTRY_POINT_GROUP", "CONFIG_FILE", "ALLOW_PROJECT_PLUGINS_ENV", "PluginError", "ProjectConfig",
           "load_project_config", "env_allows", "project_plugins_allowed", "load_plugins",
           "load_entry_point_plugins", "loaded_plugins", "import_module_from", "is_plugin_class", "layer_failure"]

ENTRY_POINT_GROUP = "dltrain.layers"
CONFIG_FILE = "dltrain.yaml"
CONFIG_KEYS = ("plugins", "log_dir")
# Set to 1 to let a dltrain.yaml found in the working directory import its plugins.
ALLOW_PROJECT_PLUGINS_ENV = "DLTRAIN_ALLOW_PROJECT_PLUGINS"

# (source, module name, [layer types it registered]) for every plugin loaded.
_loaded = []
_entry_points_loaded = False
_entry_point_failures = []          # (entry point text, error) from tolerant loading


# --- errors from plugin code ----------------------------------------------------------------
class PluginError(DLTrainError):
    """A plugin (or Python) layer raised: names the layer, its type and the
    plugin's module.  The plugin's own exception is ``__cause__`` (its
    traceback shows under ``--debug``) and ``original``.

    The class raised is also a subclass of the original exception's class
    where Python allows it, so ``except RuntimeError`` around a net whose
    Python layer raises RuntimeError still catches it, as in pycaffe.
    """

    def __init__(self, message, layer_name=None, layer_type=None, origin=None, stage=None, original=None):
        super().__init__(message)
        self.message = message
        self.layer_name = layer_name
        self.layer_type = layer_type
        self.origin = origin
        self.stage = stage
        self.original = original

    def __str__(self):
        return self.message


_mixed_classes = {}


def _error_class(exc_type):
    """PluginError combined with ``exc_type`` (or its nearest base that can be combined)."""
    if exc_type in _mixed_classes:
        return _mixed_classes[exc_type]
    chosen = PluginError
    if not issubclass(exc_type, Exception):
        return chosen          # a SystemExit or KeyboardInterrupt mixed in would end the process silently
    for base in exc_type.__mro__:
        if base in (Exception, BaseException, object) or issubclass(base, DLTrainError):
            break
        try:
            mixed = type("PluginError", (PluginError, base), {"__module__": __name__})
            mixed.__qualname__ = f"PluginError({base.__name__})"
            mixed("probe")
        except Exception:
            continue
        chosen = mixed
        break
    _mixed_classes[exc_type] = chosen
    return chosen


def is_plugin_class(cls):
    """True for layer classes that are not part of dltrain itself."""
    return cls.__module__.split(".")[0] not in ("dltrain", "dlcore")


def layer_failure(layer, stage, err, origin=None):
    """The PluginError to raise (``from err``) when ``layer``'s code raised ``err`` in ``stage``."""
    cls = type(layer)
    if origin is None:
        origin = f"plugin module '{cls.__module__}', class {cls.__qualname__}"
    detail = str(err)
    what = type(err).__name__ + (f": {detail}" if detail else "")
    name = getattr(layer, "name", "?")
    layer_type = getattr(layer, "type", None) or "?"
    message = f"layer '{name}' (type '{layer_type}', {origin}) raised in {stage}: {what}"
    return _error_class(type(err))(message, layer_name=name, layer_type=layer_type, origin=origin,
                                   stage=stage, original=err)


# --- importing plugin modules ------------------------------------------------------------------
def _missing_is(err, name):
    """Did ``import name`` fail because ``name`` itself (or a parent package) is missing?"""
    missing = getattr(err, "name", None)
    return missing is not None and (name == missing or name.startswith(missing + "."))


def import_module_from(name, fallback_dirs=()):
    """Import module ``name`` from sys.path, else from the first of
    ``fallback_dirs`` that holds it (that folder is then appended to
    sys.path, so the module's own sibling imports work).  A module that
    is nowhere raises ModuleNotFoundError; one that fails while importing
    raises its own error."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if not _missing_is(err, name):
            raise
        first_error = err
    top = name.split(".")[0]
    for folder in fallback_dirs:
        if not folder or not os.path.isdir(folder):
            continue
        folder = os.path.abspath(folder)
        if importlib.machinery.PathFinder.find_spec(top, [folder]) is None:
            continue
        if folder not in sys.path:
            sys.path.append(folder)
        importlib.invalidate_caches()
        return importlib.import_module(name)
    raise first_error


def _import_from_file(path):
    """Import a plugin given as a path to a .py file (module name: its stem)."""
    path = os.path.abspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_one(spec, source, base_dir):
    """Import plugin ``spec`` (a module name or a .py path); record what it registered."""
    from . import registry
    registry._load_builtins()
    before = set(registry._LAYERS)
    label = f"plugin '{spec}' ({source})"
    is_file = spec.endswith(".py") or os.sep in spec or bool(os.altsep and os.altsep in spec)
    path = spec if not is_file or os.path.isabs(spec) or not base_dir else os.path.join(base_dir, spec)
    if is_file and not os.path.isfile(path):
        raise ConfigError(f"{label}: no such file '{path}'")
    try:
        module = _import_from_file(path) if is_file else import_module_from(spec, [base_dir] if base_dir else [])
    except DLTrainError as err:        # e.g. a layer type it registers is taken
        raise DLTrainError(f"{label}: {err}") from err
    except ModuleNotFoundError as err:
        if _missing_is(err, spec):
            where = f"sys.path or {base_dir}" if base_dir else "sys.path"
            raise DLTrainError(f"{label}: no module named '{spec}' (looked on {where}); install the plugin "
                               "package or fix the name") from err
        raise DLTrainError(f"{label} failed to import: {type(err).__name__}: {err}") from err
    except Interrupted:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as err:     # sys.exit() in a plugin is its failure
        raise DLTrainError(f"{label} failed to import: {type(err).__name__}: {err}") from err
    _loaded.append((source, module.__name__, sorted(set(registry._LAYERS) - before)))
    _log_loaded(module.__name__, source)
    return module


def _log_loaded(module_name, source):
    module = sys.modules.get(module_name)
    where = getattr(module, "__file__", None) or "no file"
    log.info(f"loaded plugin {module_name} ({source}) from {where}")


# --- entry points ---------------------------------------------------------------------------------
def _entry_points():
    from importlib.metadata import entry_points
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep):
    from . import registry
    from .layer import Layer
    registry._load_builtins()
    before = set(registry._LAYERS)
    dist = getattr(getattr(ep, "dist", None), "name", None)
    label = f"entry point '{ep.name} = {ep.value}'" + (f" of package '{dist}'" if dist else "")
    try:
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Layer):
            if obj.type is None or registry._LAYERS.get(obj.type) is not obj:
                registry.register_layer(ep.name)(obj)
        elif callable(obj) and not isinstance(obj, type(sys)):
            obj()
    except DLTrainError as err:
        raise DLTrainError(f"plugin {label}: {err}") from err
    except Interrupted:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as err:
        raise DLTrainError(f"plugin {label} failed to load: {type(err).__name__}: {err}") from err
    module = ep.value.split(":")[0].strip()
    source = f"entry point of {dist or 'an installed package'}"
    _loaded.append((source, module, sorted(set(registry._LAYERS) - before)))
    _log_loaded(module, source)


def load_entry_point_plugins(strict=True):
    """Load every ``dltrain.layers`` entry point (once).  ``strict=False``
    records failures instead of raising (the library's lazy lookup)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        if strict and _entry_point_failures:
            raise DLTrainError(_entry_point_failures[0])
        return
    _entry_points_loaded = True
    for ep in _entry_points():
        try:
            _load_entry_point(ep)
        except DLTrainError as err:
            if strict:
                _entry_points_loaded = False
                raise
            _entry_point_failures.append(str(err))


def entry_point_failures():
    return list(_entry_point_failures)


# --- the project config -------------------------------------------------------------------------
class ProjectConfig:
    """What ``dltrain.yaml`` says (``path`` is None when there is none).
    ``found_automatically``: the file was found in the working directory,
    not named by the user."""

    def __init__(self, path=None, plugins=(), log_dir=None, found_automatically=False):
        self.path = path
        self.plugins = list(plugins)
        self.log_dir = log_dir
        self.found_automatically = found_automatically

    @property
    def folder(self):
        return os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()

    def __repr__(self):
        return (f"ProjectConfig(path={self.path!r}, plugins={self.plugins!r}, log_dir={self.log_dir!r}, "
                f"found_automatically={self.found_automatically!r})")


def load_project_config(path=None):
    """Read the project config: ``path``, else ``./dltrain.yaml`` if there is
    one (``found_automatically``), else an empty config.  A named file that is
    missing is an error; so is anything called dltrain.yaml that is not a
    readable UTF-8 YAML file (a directory, a FIFO, binary data)."""
    from .config import MAX_TEXT_BYTES, load_yaml_data, read_text_file
    found_automatically = path is None
    if path is None:
        if not os.path.lexists(CONFIG_FILE):
            return ProjectConfig()
        path = CONFIG_FILE
    elif not os.path.lexists(path):
        raise ConfigError(f"project config '{path}' does not exist", path=path)
    text = read_text_file(path, "the project config", MAX_TEXT_BYTES)
    data = load_yaml_data(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the project config must be a YAML mapping (plugins: [...], log_dir: ...)", path=path)
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown key '{key}' (known keys: {', '.join(CONFIG_KEYS)})", path=path,
                              line=_key_line(text, key), field=str(key))
    plugins = data.get("plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError("'plugins' must be a list of module names or .py paths", path=path,
                          line=_key_line(text, "plugins"), field="plugins")
    log_dir = data.get("log_dir")
    if log_dir is not None:
        if not isinstance(log_dir, str) or not log_dir:
            raise ConfigError("'log_dir' must be a folder path", path=path, line=_key_line(text, "log_dir"),
                              field="log_dir")
        log_dir = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(log_dir))
    return ProjectConfig(path, plugins, log_dir, found_automatically)


def _key_line(text, key):
    for number, line in enumerate(text.splitlines(), 1):
        if line.split(":")[0].strip() == str(key):
            return number
    return None


def env_allows(name):
    """Is the opt-in environment variable ``name`` set (1, true, yes or on)?"""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def project_plugins_allowed():
    """Has the user allowed a dltrain.yaml found automatically to import its
    plugins (``DLTRAIN_ALLOW_PROJECT_PLUGINS=1``)?"""
    return env_allows(ALLOW_PROJECT_PLUGINS_ENV)


# --- the one entry point of the CLI ------------------------------------------------------------
def load_plugins(modules=(), config=None, entry_points=True):
    """Load every plugin: installed entry points, the project config's
    ``plugins:`` and ``modules`` (the ``--plugin`` flags).  ``config`` is a
    ProjectConfig, a path to one, or None (``./dltrain.yaml`` if present,
    whose plugins load only with DLTRAIN_ALLOW_PROJECT_PLUGINS=1).
    Returns the ProjectConfig used.  Errors are DLTrainErrors naming the plugin."""
    if not isinstance(config, ProjectConfig):
        config = load_project_config(config)
    if entry_points:
        load_entry_point_plugins(strict=True)
    if config.plugins and config.found_automatically and not project_plugins_allowed():
        log.warning(f"not loading the plugins listed in {config.path} ({', '.join(config.plugins)}): that file "
                    "was found in the current folder, not named by you; to load them, pass --config "
                    f"{config.path} or set {ALLOW_PROJECT_PLUGINS_ENV}=1")
    else:
        for spec in config.plugins:
            _load_one(spec, f"from {config.path}", config.folder)
    for spec in modules or ():
        _load_one(spec, "from --plugin", os.getcwd())
    return config


def loaded_plugins():
    """[(source, module, [types])] of the plugins loaded so far."""
    return list(_loaded)
