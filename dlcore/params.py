"""Parameter schemas for plugin layers: types, defaults and checks, read from YAML.

A plugin layer declares its parameters as a class attribute::

    class GramLayer(Layer):
        params = {
            "normalize": Param(str, "spatial", choices=("none", "spatial", "all")),
            "scale": Param(float, 1.0, check=lambda v: v > 0, why="must be positive"),
        }

and the net file gives the values as a YAML mapping in the one free-text
field Caffe's schema has, ``python_param { param_str: "scale: 0.5" }`` (so
the file still parses with Caffe's own caffe.proto).  Before ``setup`` runs,
each value is checked and set as an attribute of the layer
(``self.normalize``, ``self.scale``); a missing parameter takes its default.
A bad value, an unknown name or a missing required parameter is a
:class:`ConfigError` naming the layer and the parameter.  The YAML is read
with ``safe_load``: no code runs.
"""
import math

import yaml

from .errors import ConfigError

__all__ = ["Param", "REQUIRED", "parse_params"]


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}


class Param:
    """One parameter: ``Param(type, default=REQUIRED, choices=None, check=None, why=None, doc="")``.

    ``type`` is ``int``, ``float``, ``bool``, ``str``, or a one-element list
    of one of them (``[int]``) for a list of values (a single value is taken
    as a list of one).  ``choices`` limits the values; ``check(value)``
    returns false (or raises ValueError) for a bad value, and ``why`` says
    what a good value is ("must be positive").  Without a default the
    parameter is required.
    """

    def __init__(self, type, default=REQUIRED, choices=None, check=None, why=None, doc=""):
        self.many = isinstance(type, (list, tuple))
        if self.many:
            if len(type) != 1:
                raise TypeError("a list parameter's type is a one-element list, e.g. [int]")
            type = type[0]
        if type not in _TYPE_NAMES:
            raise TypeError(f"Param type must be int, float, bool or str (or a list of one), got {type!r}")
        self.type = type
        self.default = default
        self.choices = tuple(choices) if choices is not None else None
        self.check = check
        self.why = why
        self.doc = doc

    @property
    def required(self):
        return self.default is REQUIRED

    def describe(self):
        """One line for help texts: 'float, default 1.0, must be positive'."""
        kind = self.type.__name__
        parts = [f"list of {kind}" if self.many else kind]
        parts.append("required" if self.required else f"default {self.default!r}")
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.why:
            parts.append(self.why)
        text = ", ".join(parts)
        return f"{text}: {self.doc}" if self.doc else text

    # --- checking one value ---------------------------------------------------------
    def _scalar(self, value):
        """``value`` as this parameter's type, or a ValueError saying why not."""
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                return value
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                # YAML 1.1 reads 1e-3 (no dot) as a string: accept what float() reads.
                try:
                    return float(value)
                except ValueError:
                    pass
        elif t is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"expected {_TYPE_NAMES[t]}, got {_show(value)} (a {_yaml_kind(value)}; quote it)")
        raise ValueError(f"expected {_TYPE_NAMES[t]}, got {_show(value)}")

    def convert(self, value):
        """The checked value (a list for list parameters); ValueError if bad."""
        if self.many:
            items = value if isinstance(value, list) else [value]
            value = [self._scalar(v) for v in items]
            for v in value:
                self._check_one(v)
            return value
        if isinstance(value, (list, dict)):
            raise ValueError(f"expected {_TYPE_NAMES[self.type]}, got a {_yaml_kind(value)}")
        value = self._scalar(value)
        self._check_one(value)
        return value

    def _check_one(self, value):
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{_show(value)} is not one of: {', '.join(map(str, self.choices))}")
        if self.check is not None:
            try:
                ok = self.check(value)
            except ValueError as err:
                raise ValueError(f"{_show(value)}: {err}") from None
            if not ok:
                raise ValueError(f"{_show(value)} {self.why or 'fails its check'}")


def _yaml_kind(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if value is None:
        return "null"
    return type(value).__name__


def _show(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def parse_params(schema, text, layer_name="?", layer_type="?"):
    """Check the YAML mapping ``text`` against ``schema`` ({name: Param});
    return {name: value} for every parameter (defaults filled in)."""
    where = f"layer '{layer_name}' ({layer_type})"
    values = {}
    if text and text.strip():
        try:
            given = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1} of param_str" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ConfigError(f"{where}: param_str is not valid YAML{at}: {problem}", field="param_str") from None
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: param_str must be a YAML mapping of parameters "
                              f"(name: value, ...), got a {_yaml_kind(given)}", field="param_str")
    else:
        given = {}
    known = ", ".join(schema) or "none"
    for name, value in given.items():
        if name not in schema:
            raise ConfigError(f"{where}: unknown parameter '{name}' in param_str (known parameters: {known})",
                              field=str(name))
        try:
            values[name] = schema[name].convert(value)
        except ValueError as err:
            raise ConfigError(f"{where}: parameter '{name}': {err}", field=name) from None
    for name, param in schema.items():
        if name in values:
            continue
        if param.required:
            raise ConfigError(f"{where}: parameter '{name}' is required ({param.describe()}); give it in "
                              f"python_param {{ param_str: \"{name}: ...\" }}", field=name)
        values[name] = list(param.default) if param.many else param.default
    return values
