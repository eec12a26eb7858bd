"""GeolocLoss: the mean great-circle distance between predicted and true places.

A dltrain addition (Caffe has no such layer); its settings are
``geoloc_loss_param`` (LayerParameter field 8000, see proto/caffe.proto)::

    layer {
      name: "loss"  type: "GeolocLoss"  bottom: "pred"  bottom: "label"  top: "loss"
      geoloc_loss_param { unit: DEGREES  radius: 6371 }   # loss in kilometres
    }

Bottoms: a prediction and a label, each N x 2 rows of (latitude, longitude)
in ``unit`` (DEGREES, the default, or RADIANS).  Top: the scalar

    loss = radius / N * sum_i theta_i

where theta_i is the central angle between the two points of row i
(``radius`` 1, the default, gives the mean angle in radians; 6371 gives
kilometres on the Earth's mean radius).  Any latitude and longitude is
accepted: a point is the unit vector (cos lat cos lon, cos lat sin lon,
sin lat), so longitudes that wrap (179 vs -179 degrees) and latitudes past
a pole mean what they mean on the sphere.

How the angle is computed
-------------------------
The textbook form ``arccos(sin y1 sin z1 + cos y1 cos z1 cos(dlon))`` loses
all precision for near and near-antipodal points and its derivative is
infinite there.  Instead, with (north, east) the components at point 1 of
the direction towards point 2, scaled by sin(theta),

    north = sin(lat2 - lat1) + sin(lat1) cos(lat2) * 2 sin^2(dlon / 2)
    east  = cos(lat2) sin(dlon)
    S     = hypot(north, east)                      (= sin theta)
    C     = cos(lat2 - lat1) - cos(lat1) cos(lat2) * 2 sin^2(dlon / 2)   (= cos theta)
    theta = atan2(S, C)

Every term is built from the *differences* lat2 - lat1 and dlon = lon2 -
lon1 (reduced to one period in the input unit, which is exact in degrees),
so S keeps its full relative precision as the points approach each other.
In degrees, sines and cosines are taken after an exact reduction to
[-45, 45] degrees plus whole quarter turns, so multiples of 90 degrees give
exact 0 and +-1 (the poles have cos(lat) = 0 exactly).
When the points are more than 90 degrees apart (C < 0), the same formulas
are applied to point 1 and the antipode of point 2, (-lat2, lon2 + 180
degrees), and theta = pi - theta'; so the distance *to the antipode* also
keeps its full relative precision.  All arithmetic is in float64 whatever
the blobs' dtype.

The gradient
------------
Away from the singular points, the distance grows at unit speed directly
away from the other point:

    d theta / d lat1 = -north / S,   d theta / d lon1 = -cos(lat1) * east / S

(times pi/180 for degrees), and symmetrically for point 2.  These are unit
(bearing) vectors computed from the well-conditioned north/east pair, so
they are finite and accurate however close the points are: at 1e-6 rad, or
1e-12 rad, they still match finite differences taken at a smaller step.
No clamp or epsilon is involved.

At exactly coincident points (S == 0 and C > 0: theta = 0) the distance is
a cone, |d|, and has no derivative; every vector of length <= 1 is a
subgradient.  At exactly antipodal points (S == 0, C < 0: theta = pi) the
distance is pi - |d|, likewise without a derivative.  At both, this layer
returns the gradient **0** for both points of that row (the minimum-norm
element of the generalized gradient; the other rows are unaffected).
"Exactly" means S is exactly zero in float64: identical coordinates (or
longitudes a whole number of turns apart, e.g. 180 and -180 degrees, or
both points on the same pole in degrees, whatever their longitudes), or in
the antipodal case, latitudes exactly opposite and longitudes exactly half
a turn apart (or opposite poles in degrees).  Points any representable
distance apart get the unit-speed gradient above.

Both bottoms receive gradients (the label too, as Caffe's EuclideanLoss
does), each scaled by the loss weight.
"""
import math

import numpy as np
from numba import njit

from dlcore.errors import ConfigError
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .losses import LossLayer

EARTH_RADIUS_KM = 6371.0


@njit(cache=True, inline="always")
def _reduce(d, period):
    """``d`` minus the nearest whole number of periods: in [-period/2, period/2)."""
    return d - period * math.floor(d / period + 0.5)


@njit(cache=True, inline="always")
def _sincos(x, degrees):
    """(sin, cos) of ``x`` in the input unit.

    In degrees the argument is first reduced exactly to [-45, 45] plus a
    whole number of quarter turns, so multiples of 90 degrees give exact
    0 and +-1 (cos 90 = 0 at the poles, sin 180 = 0).
    """
    if not degrees:
        return math.sin(x), math.cos(x)
    r = _reduce(x, 360.0)                     # exact: [-180, 180)
    q = math.floor(r / 90.0 + 0.5)            # nearest quarter turn, -2 .. 2
    t = (r - 90.0 * q) * (math.pi / 180.0)    # exact reduction, then |t| <= pi/4
    s = math.sin(t)
    c = math.cos(t)
    k = int(q) % 4
    if k == 0:
        return s, c
    if k == 1:
        return c, -s
    if k == 2:
        return -s, -c
    return -c, s


@njit(cache=True, inline="always")
def _bearings(lat1, lat2, dlat, dlon, degrees):
    """(north1, east1, north2, east2, C, cos lat1, cos lat2) for two points.

    All angles in the input unit: ``dlat = lat2 - lat1`` and ``dlon``
    (reduced) are the differences, taken before any trigonometry.
    north/east at each point are the components of the direction to the
    other one, times sin(theta); C is cos(theta).
    """
    s1, c1 = _sincos(lat1, degrees)
    s2, c2 = _sincos(lat2, degrees)
    sd, cd = _sincos(dlat, degrees)
    half = _sincos(0.5 * dlon, degrees)[0]
    hav2 = 2.0 * half * half                 # 1 - cos(dlon), without cancellation
    sl = _sincos(dlon, degrees)[0]
    north1 = sd + s1 * c2 * hav2
    east1 = c2 * sl
    north2 = -sd + s2 * c1 * hav2
    east2 = -c1 * sl
    cosine = cd - c1 * c2 * hav2
    return north1, east1, north2, east2, cosine, c1, c2


@njit(cache=True)
def geoloc_forward(pred, label, degrees, grad, angles):
    """Central angles (radians) of the rows of ``pred``/``label`` (flat N*2).

    ``degrees``: the inputs' unit is degrees (else radians).  Writes
    d theta / d (lat1, lon1, lat2, lon2) per row, in radians per input
    unit, into ``grad`` (N, 4) float64, and the angles into ``angles`` (N,)
    float64.  Returns the sum of the angles.
    """
    if degrees:
        scale = math.pi / 180.0
        period = 360.0
    else:
        scale = 1.0
        period = 2.0 * math.pi
    n = grad.shape[0]
    total = 0.0
    for i in range(n):
        lat1 = np.float64(pred[2 * i])
        lon1 = np.float64(pred[2 * i + 1])
        lat2 = np.float64(label[2 * i])
        lon2 = np.float64(label[2 * i + 1])
        dlat = lat2 - lat1
        dlon = _reduce(lon2 - lon1, period)
        n1, e1, n2, e2, cosine, c1, c2 = _bearings(lat1, lat2, dlat, dlon, degrees)
        flip = 1.0
        if cosine < 0.0:
            # More than a quarter turn apart: measure to the antipode of point 2,
            # (-lat2, lon2 + half a turn), and take theta = pi - theta'.
            dlat = -lat2 - lat1
            dlon = _reduce(lon2 - lon1 + 0.5 * period, period)
            n1, e1, n2, e2, cosine, c1, c2 = _bearings(lat1, -lat2, dlat, dlon, degrees)
            flip = -1.0
        s1 = math.sqrt(n1 * n1 + e1 * e1)
        s2 = math.sqrt(n2 * n2 + e2 * e2)
        theta = math.atan2(s1, cosine)
        if flip < 0.0:
            theta = math.pi - theta
        angles[i] = theta
        total += theta
        if s1 == 0.0 or s2 == 0.0:
            # Exactly coincident or antipodal: the documented gradient 0.
            grad[i, 0] = 0.0
            grad[i, 1] = 0.0
            grad[i, 2] = 0.0
            grad[i, 3] = 0.0
        else:
            # d theta'/d(point) = -(north, cos(lat) east) / S; theta = pi - theta'
            # negates it, and point 2's latitude entered as -lat2 (negated once more).
            grad[i, 0] = -flip * n1 / s1 * scale
            grad[i, 1] = -flip * c1 * e1 / s1 * scale
            grad[i, 2] = -n2 / s2 * scale
            grad[i, 3] = -flip * c2 * e2 / s2 * scale
    return total


@njit(cache=True)
def geoloc_backward(grad, coef, column, diff):
    """``diff`` (flat N*2) = coef * grad[:, column:column+2]."""
    for i in range(grad.shape[0]):
        diff[2 * i] = coef * grad[i, column]
        diff[2 * i + 1] = coef * grad[i, column + 1]


def great_circle(pred, label, unit="degrees", radius=1.0):
    """NumPy-facing helper: per-row distances (radius * central angle), float64.

    ``pred``, ``label``: arrays of shape (N, 2) of (latitude, longitude).
    """
    pred = np.ascontiguousarray(pred, np.float64).reshape(-1, 2)
    label = np.ascontiguousarray(label, np.float64).reshape(-1, 2)
    if pred.shape != label.shape:
        raise ValueError(f"great_circle: shapes {pred.shape} and {label.shape} differ")
    out = np.empty(len(pred))
    geoloc_forward(pred.reshape(-1), label.reshape(-1), unit == "degrees", np.empty((len(pred), 4)), out)
    return out * radius


@register_layer("GeolocLoss")
class GeolocLossLayer(LossLayer):
    """Mean great-circle distance between (lat, lon) predictions and labels."""

    def setup(self, bottom, top):
        p = self.layer_param.geoloc_loss_param
        self.degrees = p.unit == caffe_pb2.GeolocLossParameter.DEGREES
        self.radius = float(p.radius)
        if not self.radius > 0 or not math.isfinite(self.radius):
            raise ConfigError(f"layer '{self.name}' (GeolocLoss): geoloc_loss_param.radius must be a positive "
                              f"number (got {p.radius})", field="geoloc_loss_param.radius")
        self.grad = np.zeros((0, 4))
        self.angles = np.zeros(0)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, what in enumerate(("prediction", "label")):
            b = bottom[i]
            if b.num_axes < 1 or b.count_range(1) != 2:
                raise ConfigError(f"layer '{self.name}' (GeolocLoss): the {what} (bottom {i}) must be N x 2 "
                                  f"(latitude, longitude) rows, got {b.shape_string()}")
        n = bottom[0].shape[0]
        if self.grad.shape[0] != n:
            self.grad = np.zeros((n, 4))
            self.angles = np.zeros(n)

    def forward_cpu(self, bottom, top):
        n = bottom[0].shape[0]
        total = geoloc_forward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1),
                               self.degrees, self.grad, self.angles)
        top[0].data[...] = self.radius * total / max(n, 1)

    def backward_cpu(self, top, propagate_down, bottom):
        n = bottom[0].shape[0]
        coef = float(top[0].diff.flat[0]) * self.radius / max(n, 1)
        for i in range(2):
            if propagate_down[i]:
                geoloc_backward(self.grad, coef, 2 * i, bottom[i].diff.reshape(-1))

    def forward_gpu(self, bottom, top):
        from . import geoloc_loss_cuda
        n = bottom[0].shape[0]
        total = geoloc_loss_cuda.forward(self, bottom, top)
        top[0].data[...] = self.radius * total / max(n, 1)

    def backward_gpu(self, top, propagate_down, bottom):
        from . import geoloc_loss_cuda
        geoloc_loss_cuda.backward(self, top, propagate_down, bottom)
