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
from typing import NamedTuple

import numpy as np
from numba import float64, njit

from dlcore.errors import ConfigError
from dlcore.formula import formula
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .losses import LossLayer, flat

EARTH_RADIUS_KM = 6371.0


class Unit(NamedTuple):
    """The coordinates' unit, as the kernels take it."""
    degrees: bool
    scale: float         # radians per unit
    period: float        # a whole turn, in the unit


DEGREES = Unit(True, math.pi / 180.0, 360.0)
RADIANS = Unit(False, 1.0, 2.0 * math.pi)


@formula(inline_cpu=True)
def reduce_period(d, period):
    """``d`` minus the nearest whole number of periods: in [-period/2, period/2)."""
    return d - period * math.floor(d / period + 0.5)


@formula(inline_cpu=True)
def sincos(x, degrees):
    """(sin, cos) of ``x`` in the input unit.

    In degrees the argument is first reduced exactly to [-45, 45] plus a
    whole number of quarter turns, so multiples of 90 degrees give exact
    0 and +-1 (cos 90 = 0 at the poles, sin 180 = 0).
    """
    if not degrees:
        return math.sin(x), math.cos(x)
    r = reduce_period(x, 360.0)               # exact: [-180, 180)
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


@formula(inline_cpu=True)
def bearings(lat1, lat2, dlat, dlon, degrees):
    """(north1, east1, north2, east2, C, cos lat1, cos lat2) for two points.

    All angles in the input unit: ``dlat = lat2 - lat1`` and ``dlon``
    (reduced) are the differences, taken before any trigonometry.
    north/east at each point are the components of the direction to the
    other one, times sin(theta); C is cos(theta).
    """
    s1, c1 = sincos(lat1, degrees)
    s2, c2 = sincos(lat2, degrees)
    sd, cd = sincos(dlat, degrees)
    half = sincos(0.5 * dlon, degrees)[0]
    hav2 = 2.0 * half * half                 # 1 - cos(dlon), without cancellation
    sl = sincos(dlon, degrees)[0]
    north1 = sd + s1 * c2 * hav2
    east1 = c2 * sl
    north2 = -sd + s2 * c1 * hav2
    east2 = -c1 * sl
    cosine = cd - c1 * c2 * hav2
    return north1, east1, north2, east2, cosine, c1, c2


@formula(inline_cpu=True)
def central_angle(lat1, lon1, lat2, lon2, unit):
    """(theta, d theta / d lat1, d lon1, d lat2, d lon2) of two points, in float64.

    theta in radians, the derivatives in radians per input unit (0 at
    exactly coincident or antipodal points, see the module docstring).
    """
    lat1 = float64(lat1)
    lon1 = float64(lon1)
    lat2 = float64(lat2)
    lon2 = float64(lon2)
    degrees = unit.degrees
    scale = unit.scale
    period = unit.period
    dlat = lat2 - lat1
    dlon = reduce_period(lon2 - lon1, period)
    n1, e1, n2, e2, cosine, c1, c2 = bearings(lat1, lat2, dlat, dlon, degrees)
    flip = 1.0
    if cosine < 0.0:
        # More than a quarter turn apart: measure to the antipode of point 2,
        # (-lat2, lon2 + half a turn), and take theta = pi - theta'.
        dlat = -lat2 - lat1
        dlon = reduce_period(lon2 - lon1 + 0.5 * period, period)
        n1, e1, n2, e2, cosine, c1, c2 = bearings(lat1, -lat2, dlat, dlon, degrees)
        flip = -1.0
    s1 = math.sqrt(n1 * n1 + e1 * e1)
    s2 = math.sqrt(n2 * n2 + e2 * e2)
    theta = math.atan2(s1, cosine)
    if flip < 0.0:
        theta = math.pi - theta
    if s1 == 0.0 or s2 == 0.0:
        # Exactly coincident or antipodal: the documented gradient 0.
        return theta, 0.0, 0.0, 0.0, 0.0
    # d theta'/d(point) = -(north, cos(lat) east) / S; theta = pi - theta'
    # negates it, and point 2's latitude entered as -lat2 (negated once more).
    return (theta, -flip * n1 / s1 * scale, -flip * c1 * e1 / s1 * scale, -n2 / s2 * scale,
            -flip * c2 * e2 / s2 * scale)


@formula(inline_cpu=True)
def geoloc_row(pred, label, i, unit, grad):
    """Row i of the flat (N*2) ``pred``/``label``: writes its four derivatives into grad[4i:4i+4]
    (flat float64) and returns its central angle."""
    theta, g0, g1, g2, g3 = central_angle(pred[2 * i], pred[2 * i + 1], label[2 * i], label[2 * i + 1], unit)
    grad[4 * i] = g0
    grad[4 * i + 1] = g1
    grad[4 * i + 2] = g2
    grad[4 * i + 3] = g3
    return theta


@njit(cache=True)
def geoloc_forward(pred, label, unit, grad, angles):
    """Central angles (radians) of the rows of ``pred``/``label`` (flat N*2).

    ``unit``: DEGREES or RADIANS (a Unit).  Writes
    d theta / d (lat1, lon1, lat2, lon2) per row, in radians per input
    unit, into ``grad`` (flat N*4) float64, and the angles into ``angles``
    (N,) float64.  Returns the sum of the angles.
    """
    total = 0.0
    for i in range(angles.shape[0]):
        angles[i] = geoloc_row(pred, label, i, unit, grad)
        total += angles[i]
    return total


@njit(cache=True)
def geoloc_backward(grad, coef, column, diff):
    """``diff`` (flat N*2) = coef * the derivatives by point ``column // 2`` (grad flat N*4)."""
    for i in range(diff.shape[0] // 2):
        diff[2 * i] = coef * grad[4 * i + column]
        diff[2 * i + 1] = coef * grad[4 * i + column + 1]


def great_circle(pred, label, unit="degrees", radius=1.0):
    """NumPy-facing helper: per-row distances (radius * central angle), float64.

    ``pred``, ``label``: arrays of shape (N, 2) of (latitude, longitude).
    """
    pred = np.ascontiguousarray(pred, np.float64).reshape(-1, 2)
    label = np.ascontiguousarray(label, np.float64).reshape(-1, 2)
    if pred.shape != label.shape:
        raise ValueError(f"great_circle: shapes {pred.shape} and {label.shape} differ")
    out = np.empty(len(pred))
    geoloc_forward(pred.reshape(-1), label.reshape(-1), DEGREES if unit == "degrees" else RADIANS,
                   np.empty(4 * len(pred)), out)
    return out * radius


@register_layer("GeolocLoss")
class GeolocLossLayer(LossLayer):
    """Mean great-circle distance between (lat, lon) predictions and labels."""

    cuda_module = ".geoloc_loss_cuda"

    def setup(self, bottom, top):
        p = self.layer_param.geoloc_loss_param
        self.unit = DEGREES if p.unit == caffe_pb2.GeolocLossParameter.DEGREES else RADIANS
        self.radius = float(p.radius)
        if not self.radius > 0 or not math.isfinite(self.radius):
            raise ConfigError(f"layer '{self.name}' (GeolocLoss): geoloc_loss_param.radius must be a positive "
                              f"number (got {p.radius})", field="geoloc_loss_param.radius")
        self.grad = np.zeros(0)
        self.angles = np.zeros(0)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        for i, what in enumerate(("prediction", "label")):
            b = bottom[i]
            if b.num_axes < 1 or b.count_range(1) != 2:
                raise ConfigError(f"layer '{self.name}' (GeolocLoss): the {what} (bottom {i}) must be N x 2 "
                                  f"(latitude, longitude) rows, got {b.shape_string()}")
        self.outer, self.inner = bottom[0].shape[0], 2
        if self.angles.shape[0] != self.outer:
            self.grad = np.zeros(4 * self.outer)      # d theta / d (lat1, lon1, lat2, lon2) per row
            self.angles = np.zeros(self.outer)

    def normalized(self, loss, count):
        return self.radius * loss / self.normalizer(count)

    def forward_cpu(self, bottom, top):
        self.set_loss(bottom, top, geoloc_forward(flat(bottom[0].data), flat(bottom[1].data), self.unit,
                                                  self.grad, self.angles))

    def backward_cpu(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                geoloc_backward(self.grad, self.loss_scale(top, self.radius), 2 * i, flat(bottom[i].diff))
