"""LSTMUnit: CUDA kernels against the CPU (see tests/cuda_support.py)."""
import numpy as np
import pytest

from cuda_support import compare_layer, needs_cuda

pytestmark = needs_cuda

UNIT = 'type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h"'


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_unit(dtype):
    shapes = [(1, 3, 4), (1, 3, 16), (1, 3)]
    compare_layer(UNIT, shapes, dtype, bottom_data={2: [[1, 0, 1]]}, propagate_down=[True, True, False],
                  fill=(-2, 2))
    compare_layer(UNIT, shapes, dtype, bottom_data={2: [[0.5, 1, 0]]}, propagate_down=[False, True, False])
    compare_layer(UNIT, shapes, dtype, bottom_data={2: [[1, 1, 1]]}, propagate_down=[True, False, False])
