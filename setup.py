"""Build hook: everything else is in pyproject.toml.

Installing dltrain (``pip install .`` or ``pip install -e .``) also puts
the `caffe` fallback at the top of site-packages: ``dltrain-caffe.pth``,
whose one line imports ``_dltrain_caffe_fallback`` (a copy of
dltrain_caffe/fallback.py) at Python start-up.  That module appends a
finder to the end of ``sys.meta_path``, so ``import caffe`` gives
dltrain's pycaffe face only where no real Caffe can be imported.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_FILE = "dltrain-caffe.pth"
HOOK_MODULE = "_dltrain_caffe_fallback"


class BuildPyWithCaffeFallback(build_py):
    """build_py, plus the fallback's two files at the root of the wheel."""

    _fallback_outputs = ()

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # An editable wheel is made from the folder setuptools points
            # install_lib at; build_lib is not part of it.
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        os.makedirs(target, exist_ok=True)
        hook = os.path.join(target, HOOK_MODULE + ".py")
        self.copy_file(os.path.join(HERE, "dltrain_caffe", "fallback.py"), hook, preserve_mode=False)
        pth = os.path.join(target, PTH_FILE)
        with open(pth, "w", encoding="utf-8") as f:
            f.write(f"import {HOOK_MODULE}\n")
        self._fallback_outputs = (hook, pth)

    def get_outputs(self, include_bytecode=True):
        return list(super().get_outputs(include_bytecode)) + list(self._fallback_outputs)


setup(cmdclass={"build_py": BuildPyWithCaffeFallback})
