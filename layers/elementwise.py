"""Element-wise and reducing layers: Eltwise, Tile, Reduction, ArgMax.

Semantics follow Caffe's eltwise_layer.cpp, tile_layer.cpp,
reduction_layer.cpp and argmax_layer.cpp:

* Eltwise: PROD, SUM (one ``coeff`` per bottom) or MAX (the index of the
  winning bottom is kept for backward; the first two bottoms compare with
  ``a > b``, so a tie goes to bottom 1, later bottoms must be strictly
  larger).  PROD's gradient is the product of the other bottoms
  (``stable_prod_grad``, the default) or top / bottom.
* Tile: the blob viewed as (outer, inner) at ``axis`` repeats each inner
  block ``tiles`` times; backward sums the copies.
* Reduction: SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` on, times
  ``coeff``; the top keeps the axes before ``axis``.
* ArgMax: the top_k largest values (and/or their indices) per item, or
  along ``axis``; ties are ordered by the larger index first (Caffe sorts
  (value, index) pairs with std::greater).  No backward.

Kernels run on flat arrays and are dtype-generic.  The formulas (and
ArgMax's selection) are written once (``@formula``, below) and used by the
CPU loops here and the CUDA kernels in layers/elementwise_cuda.py.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.formula import cpu_map, formula
from dlcore.layer import Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .neurons import flat, scale_copy
from .softmax import canonical_axis

CUDA_MODULE = ".elementwise_cuda"

# the operations, as the proto's enums number them
ELTWISE_PROD = caffe_pb2.EltwiseParameter.PROD
ELTWISE_SUM = caffe_pb2.EltwiseParameter.SUM
ELTWISE_MAX = caffe_pb2.EltwiseParameter.MAX

REDUCE_SUM = caffe_pb2.ReductionParameter.SUM
REDUCE_ASUM = caffe_pb2.ReductionParameter.ASUM
REDUCE_SUMSQ = caffe_pb2.ReductionParameter.SUMSQ
REDUCE_MEAN = caffe_pb2.ReductionParameter.MEAN


# --- Eltwise ------------------------------------------------------------------

@formula
def product(a, b):
    return a * b


@formula
def quotient(a, b):
    return a / b


@formula
def keep_larger(value, new_value, index, new_index):
    """MAX's step: (new_value, new_index) where new_value > value, else (value, index) (a tie keeps the old)."""
    return (new_value, new_index) if new_value > value else (value, index)


@formula
def routed(dy, winner, index):
    """MAX's gradient into bottom ``index``: dy where it won."""
    return dy if winner == index else 0


@njit(cache=True)
def axpy_into(x, y, alpha):
    """y += alpha * x."""
    for i in range(x.shape[0]):
        y[i] += alpha * x[i]


mul_into = cpu_map(product, 2, 1)       # mul_into(a, b, y): y = a * b (y may be a or b)
div_into = cpu_map(quotient, 2, 1)      # div_into(a, b, y): y = a / b (IEEE: x/0 gives inf or nan, as in Caffe)
route_into = cpu_map(routed, 2, 1)      # route_into(dy, mask, dx, index): dx = dy where bottom index won


# MAX's steps in place: the generic map would see y and the mask twice, as an input and as an output,
# and check at run time whether they overlap (they do: no SIMD, 2-4x slower)

@njit(cache=True)
def eltwise_max_first(a, b, y, mask):
    """The first two bottoms: a > b picks bottom 0, otherwise (ties too) bottom 1."""
    for i in range(y.shape[0]):
        y[i], mask[i] = keep_larger(b[i], a[i], 1, 0)


@njit(cache=True)
def eltwise_max_next(b, index, y, mask):
    """A later bottom wins only where it is strictly larger than the maximum so far."""
    for i in range(y.shape[0]):
        y[i], mask[i] = keep_larger(y[i], b[i], mask[i], index)


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """PROD / SUM / MAX of two or more bottoms of one shape."""

    min_bottom_blobs = 2
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        param = self.layer_param.eltwise_param
        name = f"layer '{self.name}' (Eltwise)"
        self.op = int(param.operation)
        if self.op not in (ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX):
            raise ConfigError(f"{name}: unknown operation {self.op}")
        n_coeff = len(param.coeff)
        if n_coeff not in (0, len(bottom)):
            raise ConfigError(f"{name} takes one coefficient per bottom blob ({len(bottom)} bottoms, "
                              f"{n_coeff} coeff values)")
        if self.op == ELTWISE_PROD and n_coeff:
            raise ConfigError(f"{name}: only takes coefficients for summation (operation SUM), not PROD")
        if self.op == ELTWISE_PROD and top[0] is bottom[0]:
            raise ConfigError(f"{name}: operation PROD does not allow in-place computation (its gradient needs "
                              "the inputs)")
        # (MAX ignores coefficients, as Caffe does)
        self.coeffs = [float(c) for c in param.coeff] if n_coeff else [1.0] * len(bottom)
        self.stable_prod_grad = bool(param.stable_prod_grad)
        self.mask = np.zeros(0, np.int32)

    def reshape(self, bottom, top):
        for i, blob in enumerate(bottom[1:], 1):
            if blob.shape != bottom[0].shape:
                raise ConfigError(f"layer '{self.name}' (Eltwise): all bottoms must have the same shape: "
                                  f"bottom 0 is {bottom[0].shape_string()}, bottom {i} is {blob.shape_string()}")
        top[0].reshape_like(bottom[0])
        if self.op == ELTWISE_MAX and self.mask.size != bottom[0].count:
            self.mask = np.zeros(bottom[0].count, np.int32)

    def forward_cpu(self, bottom, top):
        y = flat(top[0].data)
        if self.op == ELTWISE_PROD:
            mul_into(flat(bottom[0].data), flat(bottom[1].data), y)
            for blob in bottom[2:]:
                mul_into(y, flat(blob.data), y)
        elif self.op == ELTWISE_SUM:
            scale_copy(flat(bottom[0].data), y, self.coeffs[0])
            for blob, c in zip(bottom[1:], self.coeffs[1:]):
                axpy_into(flat(blob.data), y, c)
        else:
            eltwise_max_first(flat(bottom[0].data), flat(bottom[1].data), y, self.mask)
            for i, blob in enumerate(bottom[2:], 2):
                eltwise_max_next(flat(blob.data), i, y, self.mask)

    def backward_order(self, bottom, top):
        """The bottoms' indices in the order backward writes their diffs: in place (SUM, MAX), bottom 0's
        diff is the top's, so it is written last, after every other bottom has read the top's diff."""
        order = list(range(len(bottom)))
        return order[1:] + order[:1] if top[0] is bottom[0] else order

    def backward_cpu(self, top, propagate_down, bottom):
        dy = flat(top[0].diff)
        for i in self.backward_order(bottom, top):
            blob = bottom[i]
            if not propagate_down[i]:
                continue
            dx = flat(blob.diff)
            if self.op == ELTWISE_PROD:
                if self.stable_prod_grad:
                    others = [b for j, b in enumerate(bottom) if j != i]
                    dx[...] = flat(others[0].data)
                    for other in others[1:]:
                        mul_into(flat(other.data), dx, dx)
                else:
                    div_into(flat(top[0].data), flat(blob.data), dx)
                mul_into(dx, dy, dx)
            elif self.op == ELTWISE_SUM:
                scale_copy(dy, dx, self.coeffs[i])
            else:
                route_into(dy, self.mask, dx, i)


# --- Tile ---------------------------------------------------------------------

@njit(cache=True)
def tile_forward(x, y, outer, inner, tiles):
    for o in range(outer):
        s = o * inner
        for t in range(tiles):
            d = (o * tiles + t) * inner
            for k in range(inner):
                y[d + k] = x[s + k]


@njit(cache=True)
def tile_backward(dy, dx, outer, inner, tiles):
    for o in range(outer):
        d = o * inner
        for k in range(inner):
            dx[d + k] = dy[o * tiles * inner + k]
        for t in range(1, tiles):
            s = (o * tiles + t) * inner
            for k in range(inner):
                dx[d + k] += dy[s + k]


@register_layer("Tile")
class TileLayer(Layer):
    """Repeat the blob ``tiles`` times along ``axis`` (default 1)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        param = self.layer_param.tile_param
        if not param.HasField("tiles"):
            raise ConfigError(f"layer '{self.name}' (Tile): number of tiles must be specified (tile_param.tiles)")
        self.tiles = int(param.tiles)
        if self.tiles <= 0:
            raise ConfigError(f"layer '{self.name}' (Tile): number of tiles must be positive, got {self.tiles}")

    allows_in_place = False

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.layer_param.tile_param.axis)
        shape = list(bottom[0].shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(tuple(shape))
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)

    def forward_cpu(self, bottom, top):
        tile_forward(flat(bottom[0].data), flat(top[0].data), self.outer, self.inner, self.tiles)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            tile_backward(flat(top[0].diff), flat(bottom[0].diff), self.outer, self.inner, self.tiles)


# --- Reduction ----------------------------------------------------------------

@formula
def reduction_term(x, op):
    """What an element adds to its row's reduction (before ``coeff``)."""
    if op == REDUCE_ASUM:
        return abs(x)
    if op == REDUCE_SUMSQ:
        return x * x
    return x                    # SUM, MEAN


@formula
def reduction_grad(x, g, op):
    """The gradient of an element whose row has g = coeff * dy."""
    if op == REDUCE_ASUM:       # sign(x), 0 at 0
        if x > 0:
            return g
        if x < 0:
            return -g
        return 0
    if op == REDUCE_SUMSQ:
        return 2 * g * x
    return g


@njit(cache=True)
def reduction_forward(x, y, num, dim, op, coeff):
    """y[i] = coeff * reduce(x[i*dim:(i+1)*dim]) (accumulated in float64)."""
    for i in range(num):
        acc = 0.0
        base = i * dim
        for k in range(dim):
            acc += reduction_term(x[base + k], op)
        y[i] = acc * coeff


@njit(cache=True)
def reduction_backward(x, dy, dx, num, dim, op, coeff):
    for i in range(num):
        g = dy[i] * coeff
        base = i * dim
        for k in range(dim):
            dx[base + k] = reduction_grad(x[base + k], g, op)


@register_layer("Reduction")
class ReductionLayer(Layer):
    """Reduce all axes from ``axis`` on (SUM, ASUM, SUMSQ, MEAN), times ``coeff``."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        self.op = int(self.layer_param.reduction_param.operation)
        if self.op not in (REDUCE_SUM, REDUCE_ASUM, REDUCE_SUMSQ, REDUCE_MEAN):
            raise ConfigError(f"layer '{self.name}' (Reduction): unknown reduction op {self.op}")

    allows_in_place = False

    def reshape(self, bottom, top):
        param = self.layer_param.reduction_param
        self.axis = canonical_axis(self, bottom[0], param.axis)
        top[0].reshape(bottom[0].shape[:self.axis])
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        self.coeff = float(param.coeff)
        if self.op == REDUCE_MEAN and self.dim:
            self.coeff /= self.dim

    def forward_cpu(self, bottom, top):
        reduction_forward(flat(bottom[0].data), flat(top[0].data), self.num, self.dim, self.op, self.coeff)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            reduction_backward(flat(bottom[0].data), flat(top[0].diff), flat(bottom[0].diff), self.num, self.dim,
                               self.op, self.coeff)


# --- ArgMax -------------------------------------------------------------------

class ArgMaxGeometry(NamedTuple):
    num: int            # items: item i reads x[(i // axis_dist * dim + j) * axis_dist + i % axis_dist], j < dim
    dim: int
    axis_dist: int
    top_k: int
    out_max_val: bool
    has_axis: bool


@formula
def argmax_items(x, y, g, start, stop):
    """Caffe's ArgMax of the items start to stop - 1 (``ArgMaxGeometry``): each item's top_k
    (value, index) pairs in descending order, written where Caffe puts them.

    The order is by value, ties by the larger index (std::greater on pairs); the k-th pair is the
    largest one below the (k-1)-th (O(top_k * dim), no scratch memory).  The loop over the items is
    here too: the CPU takes them all in one call (a call per item would cost up to 20% where items
    are short, e.g. 16 channels); a GPU thread one at a time."""
    for i in range(start, stop):
        base = (i // g.axis_dist) * g.dim * g.axis_dist + i % g.axis_dist
        prev_v = x[base] * 0
        prev_j = -1
        for k in range(g.top_k):
            best_j = -1
            best = prev_v
            for j in range(g.dim):
                v = x[base + j * g.axis_dist]
                if prev_j >= 0 and not (v < prev_v or (v == prev_v and j < prev_j)):
                    continue
                if best_j < 0 or v > best or (v == best and j > best_j):
                    best = v
                    best_j = j
            prev_v = best
            prev_j = best_j
            if g.out_max_val and not g.has_axis:
                y[2 * i * g.top_k + k] = best_j
                y[2 * i * g.top_k + g.top_k + k] = best
            else:
                o = (i // g.axis_dist * g.top_k + k) * g.axis_dist + i % g.axis_dist
                if g.out_max_val:
                    y[o] = best
                else:
                    y[o] = best_j


@njit(cache=True)
def argmax_forward(x, y, g):
    argmax_items(x, y, g, 0, g.num)


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """The indices (and/or values) of the top_k largest entries per item or along ``axis``."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        param = self.layer_param.argmax_param
        name = f"layer '{self.name}' (ArgMax)"
        self.out_max_val = bool(param.out_max_val)
        self.top_k = int(param.top_k)
        self.has_axis = param.HasField("axis")
        if self.top_k < 1:
            raise ConfigError(f"{name}: top_k must not be less than 1")
        if self.has_axis:
            self.axis = canonical_axis(self, bottom[0], param.axis)
            if self.top_k > bottom[0].shape[self.axis]:
                raise ConfigError(f"{name}: top_k ({self.top_k}) must be less than or equal to the dimension of "
                                  f"axis {self.axis} ({bottom[0].shape[self.axis]})")
        elif self.top_k > bottom[0].count_range(1):
            raise ConfigError(f"{name}: top_k ({self.top_k}) must be less than or equal to the dimension of the "
                              f"flattened bottom blob per instance ({bottom[0].count_range(1)})")

    allows_in_place = False

    def reshape(self, bottom, top):
        if self.has_axis:
            shape = list(bottom[0].shape)
            shape[self.axis] = self.top_k
            self.dim = bottom[0].shape[self.axis]
            self.axis_dist = bottom[0].count_range(self.axis + 1)
        else:
            shape = [1] * max(bottom[0].num_axes, 3)
            shape[0] = bottom[0].shape[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
            self.dim = bottom[0].count_range(1)
            self.axis_dist = 1
        top[0].reshape(tuple(shape))
        self.num = bottom[0].count // self.dim if self.dim else 0

    def geometry(self):
        return ArgMaxGeometry(self.num, self.dim, self.axis_dist, self.top_k, self.out_max_val, self.has_axis)

    def forward_cpu(self, bottom, top):
        argmax_forward(flat(bottom[0].data), flat(top[0].data), self.geometry())

    def allow_force_backward(self, bottom_index):
        return False   # Caffe would abort (ArgMax has no backward); dltrain just skips it

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise DLTrainError(f"layer '{self.name}' (ArgMax) has no backward: it cannot be backpropagated through")
