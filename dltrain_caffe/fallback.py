"""The `caffe` fallback: `import caffe` finds dltrain's pycaffe face only when
no other `caffe` can be imported.

Installing dltrain puts two files in site-packages: `dltrain-caffe.pth`,
whose one line imports `_dltrain_caffe_fallback` (a copy of this file) at
Python start-up, and that module.  It puts a finder at the front of
``sys.meta_path`` which, asked about `caffe`, first asks every other finder
(so every `sys.path` entry, including entries added later: a script's
``sys.path.append('/opt/caffe/python')``).  A real Caffe module or package
therefore always wins; where there is none (nothing, or only a plain
`caffe/` folder, which Python would import as an empty namespace package),
`caffe` is the package `dltrain_caffe`, loaded under the name `caffe`.

Set DLTRAIN_NO_CAFFE_SHIM=1 to switch the fallback off.  This file must
stay standalone (standard library only) and cheap: it runs at every start.
"""
import os
import sys

SHIM_PACKAGE = "dltrain_caffe"


class DLTrainCaffeFallback:
    """A meta-path finder for the one name `caffe` (its submodules are found
    through the package's own ``__path__``)."""

    dltrain_caffe_fallback = True

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != "caffe" or os.environ.get("DLTRAIN_NO_CAFFE_SHIM"):
            return None
        found = _regular_spec(fullname, path, target)
        if found is not None:
            return found              # a real Caffe: normal import wins
        import importlib.util
        try:
            shim = importlib.util.find_spec(SHIM_PACKAGE)
        except (ImportError, ValueError):
            return None
        if shim is None or not shim.submodule_search_locations or not shim.origin:
            return None
        return importlib.util.spec_from_file_location(
            "caffe", shim.origin, submodule_search_locations=list(shim.submodule_search_locations))

    @classmethod
    def invalidate_caches(cls):
        pass


def _regular_spec(fullname, path, target):
    """What the other finders find for ``fullname``, if it is a regular module or package.

    A folder named `caffe` without ``__init__.py`` (a Caffe source clone in
    the working folder) is only a namespace package: normal import would
    take it and give an empty module, so it does not count.
    """
    for finder in list(sys.meta_path):
        if getattr(finder, "dltrain_caffe_fallback", False):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(fullname, path, target)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin not in (None, "namespace"):
            return spec
    return None


def install():
    """Put the finder FIRST on sys.meta_path (once): it asks the other
    finders itself, so it sees a namespace-package `caffe` before Python
    would settle for it."""
    if not any(getattr(f, "dltrain_caffe_fallback", False) for f in sys.meta_path):
        sys.meta_path.insert(0, DLTrainCaffeFallback)


install()
