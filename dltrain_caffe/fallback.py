"""The `caffe` fallback: `import caffe` finds dltrain's pycaffe face only when
no other `caffe` can be imported.

Installing dltrain puts two files in site-packages: `dltrain-caffe.pth`,
whose one line imports `_dltrain_caffe_fallback` (a copy of this file) at
Python start-up, and that module.  It appends a finder to the END of
``sys.meta_path``; Python asks it about `caffe` only after every other
finder has searched every `sys.path` entry, including entries added later
(a script's ``sys.path.append('/opt/caffe/python')``).  A real Caffe
therefore always wins; where there is none, `caffe` is the package
`dltrain_caffe`, loaded under the name `caffe`.

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


def install():
    """Append the finder to sys.meta_path (once)."""
    if not any(getattr(f, "dltrain_caffe_fallback", False) for f in sys.meta_path):
        sys.meta_path.append(DLTrainCaffeFallback)


install()
