"""What the CUDA tests share: when they run, and a CPU-vs-GPU comparison of one layer.

The CUDA tests (tests/test_cuda_*.py) run

* under Numba's CUDA simulator: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest
  -q tests/test_cuda_*.py`` (the variable must be set before numba is
  imported, hence a pytest run of their own; .ci/run does it);
* on a real GPU: ``DLTRAIN_TEST_REAL_GPU=1 python -m pytest -q
  tests/test_cuda_*.py`` (bench/gpu_check.sh does it);

and are skipped otherwise (the plain ``pytest -q`` run, which keeps one
simulator smoke test in tests/test_gpu_backend.py).
"""
import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")
REAL_GPU = os.environ.get("DLTRAIN_TEST_REAL_GPU", "0").strip() not in ("", "0")
ACTIVE = SIM or REAL_GPU

needs_cuda = pytest.mark.skipif(
    not ACTIVE, reason="CUDA tests: run with NUMBA_ENABLE_CUDASIM=1 (simulator) or DLTRAIN_TEST_REAL_GPU=1")


def check_device():
    """On a real-GPU run, fail loudly (not skip) when no GPU can be used."""
    if REAL_GPU and not SIM:
        from dlcore import backend
        ok, reason = backend.gpu_available()
        if not ok:
            raise RuntimeError(f"DLTRAIN_TEST_REAL_GPU=1 but no GPU can be used: {reason}")


def tolerance(dtype):
    """Relative tolerance of a GPU result against the CPU one."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 2e-5


def rel_err(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} vs {ref.shape}")
    if ref.size == 0:
        return 0.0
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1.0))


def make_layer(definition, bottom_shapes, dtype=np.float64, seed=0, integer_bottoms=None, bottom_data=None,
               n_top=None, fill=(-1.0, 1.0)):
    """A layer from prototxt text, set up on random bottoms (CPU mode); returns (layer, bottom, top)."""
    from google.protobuf import text_format

    from dlcore import Blob
    from dlcore.registry import get_layer_class
    from dltrain.proto import caffe_pb2
    param = text_format.Parse(definition, caffe_pb2.LayerParameter())
    if not param.name:
        param.name = param.type.lower()
    cls = get_layer_class(param.type)
    layer = cls(param, dtype=dtype)
    layer.gpu = False
    rng = np.random.default_rng(seed)
    integer_bottoms = integer_bottoms or {}
    bottom_data = bottom_data or {}
    bottom = []
    for i, shape in enumerate(bottom_shapes):
        blob = Blob(*shape, dtype=dtype)
        if i in bottom_data:
            blob.data[...] = np.asarray(bottom_data[i]).reshape(shape)
        elif i in integer_bottoms:
            blob.data[...] = rng.integers(0, integer_bottoms[i], size=shape)
        else:
            blob.data[...] = rng.uniform(fill[0], fill[1], size=shape)
        bottom.append(blob)
    if n_top is None:
        n_top = len(param.top) or max(cls.exact_num_top_blobs or 0, cls.min_top_blobs or 0, 1)
    top = [Blob(dtype=dtype) for _ in range(n_top)]
    layer.initialize(bottom, top)
    for blob in layer.blobs:
        blob.data[...] = rng.uniform(-1, 1, blob.shape)
    return layer, bottom, top


def run_pass(layer, bottom, top, gpu, top_diffs, propagate_down, param_diff_start, seed=1701, reset=None):
    """One forward and backward in one mode; returns (tops' data, bottoms' diffs, params' diffs) on the host."""
    from dlcore.rng import set_random_seed
    layer.gpu = gpu
    if reset is not None:
        reset(layer)
    for blob, start in zip(layer.blobs, param_diff_start):
        blob.diff[...] = start
    for blob in bottom:
        blob.diff[...] = np.nan            # a layer must write (not add to) the bottom diffs it propagates to
    set_random_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    heads = [blob.data_head for blob in top]
    outs = [blob.data.copy() for blob in top]
    for blob, diff in zip(top, top_diffs):
        if diff is not None:
            blob.diff[...] = diff
    layer.backward(top, propagate_down, bottom)
    heads += [blob.diff_head for blob, down in zip(bottom, propagate_down) if down]
    heads += [blob.diff_head for blob in layer.blobs]
    if gpu and layer.has_gpu_forward() and not any(h == "device" for h in heads) and top \
            and layer.type not in ("Accuracy", "Flatten", "Reshape"):   # tiny host tops; pure views
        # a GPU pass leaves results on the device (loss layers write their scalar on the host)
        if not all(b.count <= 1 for b in top):
            raise AssertionError(f"{layer.type}: the GPU pass left nothing on the device (heads {heads})")
    bottom_diffs = [blob.diff.copy() if down else None for blob, down in zip(bottom, propagate_down)]
    param_diffs = [blob.diff.copy() for blob in layer.blobs]
    return outs, bottom_diffs, param_diffs


def compare_layer(definition, bottom_shapes, dtype=np.float64, propagate_down=None, seed=0, integer_bottoms=None,
                  bottom_data=None, n_top=None, reset=None, top_diff_scale=1.0, backward=True, fill=(-1.0, 1.0),
                  tol=None, skip_tops=()):
    """Run a layer's CPU and GPU passes on the same data; assert tops, bottom diffs and param diffs agree.

    The GPU pass goes through ``layer.forward``/``layer.backward`` (the
    dispatch a net uses) with ``layer.gpu = True``; the blobs' host/device
    syncing moves the data.  Param diffs start non-zero, so accumulation
    (not overwriting) is checked too.  Returns the layer.
    """
    check_device()
    layer, bottom, top = make_layer(definition, bottom_shapes, dtype, seed, integer_bottoms, bottom_data, n_top,
                                    fill)
    if propagate_down is None:
        propagate_down = [i not in (integer_bottoms or {}) for i in range(len(bottom))]
    rng = np.random.default_rng(seed + 1)
    layer.reshape(bottom, top)
    top_diffs = []
    for i, blob in enumerate(top):
        if i in skip_tops:
            top_diffs.append(None)
        elif blob.shape == () or (layer.loss_weights and i < len(layer.loss_weights) and layer.loss_weights[i]):
            top_diffs.append(np.full(blob.shape, 0.7))             # a loss weight
        else:
            top_diffs.append(top_diff_scale * rng.uniform(-1, 1, blob.shape))
    starts = [rng.uniform(-1, 1, blob.shape) for blob in layer.blobs]
    if not backward:
        propagate_down = [False] * len(bottom)
    cpu = run_pass(layer, bottom, top, False, top_diffs, propagate_down, starts, reset=reset)
    gpu = run_pass(layer, bottom, top, True, top_diffs, propagate_down, starts, reset=reset)
    tol = tolerance(dtype) if tol is None else tol
    what = [("top", i) for i in range(len(cpu[0]))]
    pairs = list(zip(gpu[0], cpu[0]))
    for i, (g, c) in enumerate(zip(gpu[1], cpu[1])):
        if c is not None:
            what.append(("bottom diff", i))
            pairs.append((g, c))
    for i, (g, c) in enumerate(zip(gpu[2], cpu[2])):
        what.append(("param diff", i))
        pairs.append((g, c))
    for (kind, i), (g, c) in zip(what, pairs):
        if kind == "top" and i in skip_tops:
            continue
        err = rel_err(g, c)
        assert np.isfinite(g).all() == np.isfinite(c).all(), f"{layer.type}: {kind} {i} finiteness differs"
        assert err <= tol, f"{layer.type} ({np.dtype(dtype).name}): {kind} {i} differs: relative error {err:.3g}"
    return layer
