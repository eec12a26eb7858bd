"""docs/ARCHITECTURE.md's worked example (a Softplus activation, CPU and GPU) runs as written.

The two files are taken from the page's code blocks and imported as a plugin would be (top-level
modules beside each other), so the page cannot drift from working code.  The CPU gradient check runs
in every suite run; the GPU-vs-CPU comparison runs under the CUDA simulator or on a real GPU.
"""
import math
import os
import re
import sys

import numpy as np
import pytest

from cuda_support import compare_layer, needs_cuda

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "ARCHITECTURE.md")
DEFINITION = 'type: "Softplus" bottom: "x" top: "y"'


def _blocks():
    text = open(DOC, encoding="utf-8").read()
    blocks = {}
    for body in re.findall(r"```python\n(.*?)```", text, re.S):
        first = body.splitlines()[0]
        if first.startswith("# layers/"):
            blocks[os.path.basename(first[2:].strip())] = body
    return blocks


@pytest.fixture(scope="module")
def softplus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    blocks = _blocks()
    assert set(blocks) == {"softplus.py", "softplus_cuda.py"}, sorted(blocks)
    for name, body in blocks.items():
        # In the catalog the module is dltrain.layers.softplus; here it is the top-level `softplus`.
        (folder / name).write_text(body.replace("from dltrain.layers.softplus import", "from softplus import"))
    sys.path.insert(0, str(folder))
    try:
        import softplus as module
        yield module
    finally:
        sys.path.remove(str(folder))


def test_softplus_formula_and_cpu_gradient(softplus):
    from dlcore.gradcheck import check_layer
    assert softplus.softplus(0.0) == pytest.approx(math.log(2.0))
    assert softplus.softplus(50.0) == pytest.approx(50.0)
    assert softplus.softplus(-50.0) == pytest.approx(math.exp(-50.0))
    x = np.linspace(-3, 3, 7)
    y = np.empty_like(x)
    softplus.softplus_forward(x, y)
    assert np.allclose(y, np.log1p(np.exp(x)))
    check_layer(DEFINITION, [(2, 3, 4, 4)])


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_gpu_matches_cpu(softplus, dtype):
    layer = compare_layer(DEFINITION, [(2, 3, 4, 4)], dtype=dtype, fill=(-4.0, 4.0))
    assert layer.has_gpu_forward() and layer.has_gpu_backward()
