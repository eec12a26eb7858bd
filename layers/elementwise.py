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

Kernels run on flat arrays and are dtype-generic; the CUDA kernels are in
layers/elementwise_cuda.py.
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .neurons import scale_copy
from .softmax import canonical_axis


def flat(array):
    return array.reshape(-1)


# --- Eltwise ------------------------------------------------------------------

@njit(cache=True)
def axpy_into(x, y, alpha):
    """y += alpha * x."""
    for i in range(x.shape[0]):
        y[i] += alpha * x[i]


@njit(cache=True)
def mul_into(a, b, y):
    """y = a * b (y may be a or b)."""
    for i in range(y.shape[0]):
        y[i] = a[i] * b[i]


@njit(cache=True, error_model="numpy")
def div_into(a, b, y):
    """y = a / b (IEEE: x/0 gives inf or nan, as in Caffe)."""
    for i in range(y.shape[0]):
        y[i] = a[i] / b[i]


@njit(cache=True)
def eltwise_max_first(a, b, y, mask):
    """The first two bottoms: a > b picks bottom 0, otherwise (ties too) bottom 1."""
    for i in range(y.shape[0]):
        if a[i] > b[i]:
            y[i] = a[i]
            mask[i] = 0
        else:
            y[i] = b[i]
            mask[i] = 1


@njit(cache=True)
def eltwise_max_next(b, index, y, mask):
    """A later bottom wins only where it is strictly larger."""
    for i in range(y.shape[0]):
        if b[i] > y[i]:
            y[i] = b[i]
            mask[i] = index


@njit(cache=True)
def eltwise_max_backward(dy, mask, index, dx):
    for i in range(dx.shape[0]):
        if mask[i] == index:
            dx[i] = dy[i]
        else:
            dx[i] = 0


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """PROD / SUM / MAX of two or more bottoms of one shape."""

    min_bottom_blobs = 2
    exact_num_top_blobs = 1

    PROD, SUM, MAX = 0, 1, 2

    def setup(self, bottom, top):
        param = self.layer_param.eltwise_param
        name = f"layer '{self.name}' (Eltwise)"
        self.op = int(param.operation)
        if self.op not in (self.PROD, self.SUM, self.MAX):
            raise ConfigError(f"{name}: unknown operation {self.op}")
        n_coeff = len(param.coeff)
        if n_coeff not in (0, len(bottom)):
            raise ConfigError(f"{name} takes one coefficient per bottom blob ({len(bottom)} bottoms, "
                              f"{n_coeff} coeff values)")
        if self.op == self.PROD and n_coeff:
            raise ConfigError(f"{name}: only takes coefficients for summation (operation SUM), not PROD")
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
        if self.op == self.MAX and self.mask.size != bottom[0].count:
            self.mask = np.zeros(bottom[0].count, np.int32)

    def forward_cpu(self, bottom, top):
        y = flat(top[0].data)
        if self.op == self.PROD:
            mul_into(flat(bottom[0].data), flat(bottom[1].data), y)
            for blob in bottom[2:]:
                mul_into(y, flat(blob.data), y)
        elif self.op == self.SUM:
            scale_copy(flat(bottom[0].data), y, self.coeffs[0])
            for blob, c in zip(bottom[1:], self.coeffs[1:]):
                axpy_into(flat(blob.data), y, c)
        else:
            eltwise_max_first(flat(bottom[0].data), flat(bottom[1].data), y, self.mask)
            for i, blob in enumerate(bottom[2:], 2):
                eltwise_max_next(flat(blob.data), i, y, self.mask)

    def backward_cpu(self, top, propagate_down, bottom):
        dy = flat(top[0].diff)
        for i, blob in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = flat(blob.diff)
            if self.op == self.PROD:
                if self.stable_prod_grad:
                    others = [b for j, b in enumerate(bottom) if j != i]
                    dx[...] = flat(others[0].data)
                    for other in others[1:]:
                        mul_into(flat(other.data), dx, dx)
                else:
                    div_into(flat(top[0].data), flat(blob.data), dx)
                mul_into(dx, dy, dx)
            elif self.op == self.SUM:
                scale_copy(dy, dx, self.coeffs[i])
            else:
                eltwise_max_backward(dy, self.mask, i, dx)

    def forward_gpu(self, bottom, top):
        from . import elementwise_cuda as C
        C.eltwise_forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        from . import elementwise_cuda as C
        C.eltwise_backward(self, top, propagate_down, bottom)


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

    def setup(self, bottom, top):
        param = self.layer_param.tile_param
        if not param.HasField("tiles"):
            raise ConfigError(f"layer '{self.name}' (Tile): number of tiles must be specified (tile_param.tiles)")
        self.tiles = int(param.tiles)
        if self.tiles <= 0:
            raise ConfigError(f"layer '{self.name}' (Tile): number of tiles must be positive, got {self.tiles}")

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (Tile) does not allow in-place computation")
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

    def forward_gpu(self, bottom, top):
        from . import elementwise_cuda as C
        C.tile_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), self.outer, self.inner, self.tiles)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import elementwise_cuda as C
            C.tile_backward(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), self.outer, self.inner, self.tiles)


# --- Reduction ----------------------------------------------------------------

R_SUM, R_ASUM, R_SUMSQ, R_MEAN = 1, 2, 3, 4


@njit(cache=True)
def reduction_forward(x, y, num, dim, op, coeff):
    """y[i] = coeff * reduce(x[i*dim:(i+1)*dim]) (accumulated in float64)."""
    for i in range(num):
        acc = 0.0
        base = i * dim
        if op == 2:          # ASUM
            for k in range(dim):
                acc += abs(x[base + k])
        elif op == 3:        # SUMSQ
            for k in range(dim):
                v = x[base + k]
                acc += v * v
        else:                # SUM, MEAN
            for k in range(dim):
                acc += x[base + k]
        y[i] = acc * coeff


@njit(cache=True)
def reduction_backward(x, dy, dx, num, dim, op, coeff):
    for i in range(num):
        g = dy[i] * coeff
        base = i * dim
        if op == 2:          # ASUM: sign(x), 0 at 0
            for k in range(dim):
                v = x[base + k]
                if v > 0:
                    dx[base + k] = g
                elif v < 0:
                    dx[base + k] = -g
                else:
                    dx[base + k] = 0
        elif op == 3:        # SUMSQ
            for k in range(dim):
                dx[base + k] = 2 * g * x[base + k]
        else:
            for k in range(dim):
                dx[base + k] = g


@register_layer("Reduction")
class ReductionLayer(Layer):
    """Reduce all axes from ``axis`` on (SUM, ASUM, SUMSQ, MEAN), times ``coeff``."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        self.op = int(self.layer_param.reduction_param.operation)
        if self.op not in (R_SUM, R_ASUM, R_SUMSQ, R_MEAN):
            raise ConfigError(f"layer '{self.name}' (Reduction): unknown reduction op {self.op}")

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (Reduction) does not allow in-place computation")
        param = self.layer_param.reduction_param
        self.axis = canonical_axis(self, bottom[0], param.axis)
        top[0].reshape(bottom[0].shape[:self.axis])
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        self.coeff = float(param.coeff)
        if self.op == R_MEAN and self.dim:
            self.coeff /= self.dim

    def forward_cpu(self, bottom, top):
        reduction_forward(flat(bottom[0].data), flat(top[0].data), self.num, self.dim, self.op, self.coeff)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            reduction_backward(flat(bottom[0].data), flat(top[0].diff), flat(bottom[0].diff), self.num, self.dim,
                               self.op, self.coeff)

    def forward_gpu(self, bottom, top):
        from . import elementwise_cuda as C
        C.reduction_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), self.num, self.dim, self.op,
                            self.coeff)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import elementwise_cuda as C
            C.reduction_backward(bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), self.num,
                                 self.dim, self.op, self.coeff)


# --- ArgMax -------------------------------------------------------------------

@njit(cache=True)
def argmax_forward(x, y, num, dim, axis_dist, top_k, out_max_val, has_axis):
    """Caffe's ArgMax: for item i, the top_k (value, index) pairs in descending
    order, ties broken by the larger index (std::greater on pairs).

    Item i reads x[(i // axis_dist * dim + j) * axis_dist + i % axis_dist],
    j < dim.  The k-th pair is the largest one below the (k-1)-th in that
    order (O(top_k * dim), no scratch memory; the CUDA kernel does the same).
    """
    for i in range(num):
        base = (i // axis_dist) * dim * axis_dist + i % axis_dist
        prev_v = x[base] * 0
        prev_j = -1
        for k in range(top_k):
            best_j = -1
            best = prev_v
            for j in range(dim):
                v = x[base + j * axis_dist]
                if prev_j >= 0 and not (v < prev_v or (v == prev_v and j < prev_j)):
                    continue
                if best_j < 0 or v > best or (v == best and j > best_j):
                    best = v
                    best_j = j
            prev_v = best
            prev_j = best_j
            if out_max_val and not has_axis:
                y[2 * i * top_k + k] = best_j
                y[2 * i * top_k + top_k + k] = best
            else:
                o = (i // axis_dist * top_k + k) * axis_dist + i % axis_dist
                if out_max_val:
                    y[o] = best
                else:
                    y[o] = best_j


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """The indices (and/or values) of the top_k largest entries per item or along ``axis``."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

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

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (ArgMax) does not allow in-place computation")
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

    def forward_cpu(self, bottom, top):
        argmax_forward(flat(bottom[0].data), flat(top[0].data), self.num, self.dim, self.axis_dist, self.top_k,
                       self.out_max_val, self.has_axis)

    def allow_force_backward(self, bottom_index):
        return False   # Caffe would abort (ArgMax has no backward); dltrain just skips it

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise DLTrainError(f"layer '{self.name}' (ArgMax) has no backward: it cannot be backpropagated through")

    def forward_gpu(self, bottom, top):
        from . import elementwise_cuda as C
        C.argmax_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), self.num, self.dim, self.axis_dist,
                         self.top_k, self.out_max_val, self.has_axis)

    def backward_gpu(self, top, propagate_down, bottom):
        self.backward_cpu(top, propagate_down, bottom)
