"""GeolocLoss: values against an independent haversine, gradients, the singular points."""
import math

import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer
from dlcore.gradcheck import GradientChecker
from dltrain.layers.geoloc_loss import great_circle


def layer_of(params="", dtype=np.float64, loss_weight=None):
    weight = "" if loss_weight is None else f"loss_weight: {loss_weight}"
    return create_layer(f'name: "geo" type: "GeolocLoss" {weight} geoloc_loss_param {{ {params} }}', dtype=dtype)


def blob_of(values, dtype=np.float64):
    values = np.asarray(values, dtype=np.float64)
    blob = Blob(*values.shape, dtype=dtype)
    blob.data[...] = values
    return blob


def haversine(a, b, degrees=True):
    """Independent reference: the haversine formula in NumPy (radians of central angle)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if degrees:
        a, b = np.radians(a), np.radians(b)
    dlat = b[:, 0] - a[:, 0]
    dlon = b[:, 1] - a[:, 1]
    h = np.sin(dlat / 2) ** 2 + np.cos(a[:, 0]) * np.cos(b[:, 0]) * np.sin(dlon / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def run(layer, pred, label, dtype=np.float64, weight=None):
    """Forward and backward to both bottoms; returns (loss, d pred, d label)."""
    bottom = [blob_of(pred, dtype), blob_of(label, dtype)]
    top = [Blob(dtype=dtype)]
    layer.initialize(bottom, top)
    if weight is not None:
        top[0].diff[...] = weight
    layer.forward(bottom, top)
    layer.backward(top, [True, True], bottom)
    return float(top[0].data), bottom[0].diff.copy(), bottom[1].diff.copy()


def random_pairs(n, seed, min_angle=0.05, max_angle=math.pi - 0.05):
    """Random (lat, lon) pairs in degrees, away from coincidence and antipodes."""
    rng = np.random.default_rng(seed)
    pred, label = [], []
    while len(pred) < n:
        a = [rng.uniform(-85, 85), rng.uniform(-180, 180)]
        b = [rng.uniform(-85, 85), rng.uniform(-180, 180)]
        if min_angle < haversine([a], [b])[0] < max_angle:
            pred.append(a)
            label.append(b)
    return np.array(pred), np.array(label)


def numeric_gradient(pred, label, h, params="", which=0):
    """Central differences of the layer's own loss, one coordinate at a time (float64)."""
    grads = np.zeros_like(pred if which == 0 else label)
    for idx in np.ndindex(grads.shape):
        values = []
        for sign in (1, -1):
            p, q = pred.copy(), label.copy()
            (p if which == 0 else q)[idx] += sign * h
            values.append(run(layer_of(params), p, q)[0])
        grads[idx] = (values[0] - values[1]) / (2 * h)
    return grads


# --- values -------------------------------------------------------------------

def test_values_match_haversine_degrees():
    pred, label = random_pairs(64, 1, 0.0, math.pi)
    loss, _, _ = run(layer_of(), pred, label)
    np.testing.assert_allclose(loss, haversine(pred, label).mean(), rtol=1e-12)
    np.testing.assert_allclose(great_circle(pred, label), haversine(pred, label), rtol=1e-10, atol=1e-14)


def test_known_distances():
    # A quarter turn along the equator, pole to equator, pole to pole, London-Paris.
    pred = [[0, 0], [90, 0], [90, 0], [51.5074, -0.1278]]
    label = [[0, 90], [0, 123], [-90, 17], [48.8566, 2.3522]]
    d = great_circle(pred, label, radius=6371.0)
    np.testing.assert_allclose(d[:3], [6371 * math.pi / 2, 6371 * math.pi / 2, 6371 * math.pi], rtol=1e-12)
    assert abs(d[3] - 343.5) < 1.0      # km, the usual haversine figure


def test_radians_and_radius():
    pred, label = random_pairs(16, 2, 0.0, math.pi)
    deg, _, _ = run(layer_of(), pred, label)
    rad, dp, dl = run(layer_of("unit: RADIANS"), np.radians(pred), np.radians(label))
    km, dpk, dlk = run(layer_of("unit: RADIANS radius: 6371"), np.radians(pred), np.radians(label))
    np.testing.assert_allclose(rad, deg, rtol=1e-12)
    np.testing.assert_allclose(km, 6371 * deg, rtol=1e-6)
    np.testing.assert_allclose(dpk, 6371 * dp, rtol=1e-6)
    np.testing.assert_allclose(dlk, 6371 * dl, rtol=1e-6)
    # Degrees: the gradient per degree is pi/180 times the gradient per radian.
    _, dpd, _ = run(layer_of(), pred, label)
    np.testing.assert_allclose(dpd, dp * math.pi / 180, rtol=1e-10)


def test_longitude_wrap():
    # 179 and -179 degrees are 2 degrees apart, not 358; same for radians, and
    # whole turns added to a longitude change nothing.
    loss, dp, dl = run(layer_of(), [[10.0, 179.0]], [[10.0, -179.0]])
    np.testing.assert_allclose(loss, haversine([[10, 179]], [[10, 181]])[0], rtol=1e-12)
    assert loss < math.radians(2.0)
    # Moving the prediction east (towards -179 across the date line) shortens the distance.
    assert dp[0, 1] < 0 and dl[0, 1] > 0
    loss2, dp2, dl2 = run(layer_of(), [[10.0, 179.0 + 720.0]], [[10.0, -179.0 - 360.0]])
    np.testing.assert_allclose(loss2, loss, rtol=1e-9)
    np.testing.assert_allclose(dp2, dp, rtol=1e-9)
    lr, _, _ = run(layer_of("unit: RADIANS"), [[0.2, math.pi - 0.01]], [[0.2, -math.pi + 0.01]])
    np.testing.assert_allclose(lr, haversine([[0.2, math.pi - 0.01]], [[0.2, math.pi + 0.01]], False)[0],
                               rtol=1e-9)


def test_float32_blobs():
    pred, label = random_pairs(32, 3)
    loss32, dp32, _ = run(layer_of(dtype=np.float32), pred, label, np.float32)
    loss64, dp64, _ = run(layer_of(), pred.astype(np.float32), label.astype(np.float32))
    assert dp32.dtype == np.float32
    np.testing.assert_allclose(loss32, loss64, rtol=1e-6)
    np.testing.assert_allclose(dp32, dp64, rtol=1e-5, atol=1e-9)


# --- gradients ------------------------------------------------------------------

@pytest.mark.parametrize("params", ["", "unit: RADIANS radius: 3"])
def test_gradient_check(params):
    pred, label = random_pairs(6, 4)
    if "RADIANS" in params:
        pred, label = np.radians(pred), np.radians(label)
    step = 1e-2 if not params else 1e-4
    layer = layer_of(params)
    bottom, top = [blob_of(pred), blob_of(label)], [Blob(dtype=np.float64)]
    GradientChecker(step, 1e-4).check_gradient_exhaustive(layer, bottom, top)


def test_gradient_scaled_by_loss_weight_and_batch():
    pred, label = random_pairs(5, 5)
    _, dp1, dl1 = run(layer_of(), pred, label)
    _, dp3, dl3 = run(layer_of(loss_weight=3.0), pred, label, weight=3.0)
    np.testing.assert_allclose(dp3, 3 * dp1, rtol=1e-12)
    np.testing.assert_allclose(dl3, 3 * dl1, rtol=1e-12)
    # Each row's gradient is a unit-speed bearing: |d theta| = 1 per radian, / N.
    per_row = np.hypot(dp1[:, 0], dp1[:, 1] / np.cos(np.radians(pred[:, 0]))) * 180 / math.pi * len(pred)
    np.testing.assert_allclose(per_row, 1.0, rtol=1e-10)


def test_gradient_is_symmetric_in_the_bottoms():
    pred, label = random_pairs(4, 6)
    _, dp, dl = run(layer_of(), pred, label)
    _, dl_swapped, dp_swapped = run(layer_of(), label, pred)
    np.testing.assert_allclose(dp, dp_swapped, rtol=1e-12)
    np.testing.assert_allclose(dl, dl_swapped, rtol=1e-12)


# --- the singular points ----------------------------------------------------------

@pytest.mark.parametrize("point", [[0.0, 0.0], [37.5, -122.25], [90.0, 10.0], [-89.0, 179.5]])
def test_exactly_coincident(point):
    # Coincident: distance 0 and the documented gradient 0 (not NaN/inf).
    loss, dp, dl = run(layer_of(), [point, [10, 20]], [point, [30, 40]])
    ref = haversine([[10, 20]], [[30, 40]])[0] / 2
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    assert np.all(dp[0] == 0) and np.all(dl[0] == 0)
    assert np.all(dp[1] != 0) and np.all(np.isfinite(dp))


def test_coincident_across_the_date_line():
    loss, dp, dl = run(layer_of(), [[12.0, 180.0]], [[12.0, -180.0]])
    assert loss == 0.0
    assert np.all(dp == 0) and np.all(dl == 0)


def test_same_pole_any_longitude_is_coincident():
    loss, dp, dl = run(layer_of(), [[90.0, 0.0], [-90.0, 10.0]], [[90.0, 45.0], [-90.0, -120.0]])
    assert loss == 0.0
    assert np.all(dp == 0) and np.all(dl == 0)


@pytest.mark.parametrize("a,b", [([0.0, 0.0], [0.0, 180.0]), ([30.0, 10.0], [-30.0, -170.0]),
                                 ([90.0, 0.0], [-90.0, 0.0]), ([-45.5, 100.25], [45.5, -79.75])])
def test_exactly_antipodal(a, b):
    # Antipodal: distance pi and the documented gradient 0.
    loss, dp, dl = run(layer_of(), [a], [b])
    assert loss == pytest.approx(math.pi, abs=1e-15)
    assert np.all(dp == 0) and np.all(dl == 0)


@pytest.mark.parametrize("antipodal", [False, True])
@pytest.mark.parametrize("params", ["", "unit: RADIANS"])
def test_near_singular_points_gradient_matches_finite_differences(antipodal, params):
    # Points 1e-6 rad from coincidence (or from the antipode), in several
    # directions: the gradient is finite, has unit speed, and matches
    # central differences taken with a step 1000 times smaller.
    rng = np.random.default_rng(7)
    degrees = not params
    unit = math.pi / 180 if degrees else 1.0
    for _ in range(6):
        lat = rng.uniform(-70, 70)
        lon = rng.uniform(-180, 180)
        bearing = rng.uniform(0, 2 * math.pi)
        delta = 1e-6                                       # radians
        dlat = delta * math.cos(bearing)
        dlon = delta * math.sin(bearing) / math.cos(math.radians(lat))
        p = np.array([[lat, lon]]) * (1.0 if degrees else math.pi / 180)
        q = p + np.array([[dlat, dlon]]) / unit
        if antipodal:
            q = np.array([[-q[0, 0], q[0, 1] + (180.0 if degrees else math.pi)]])
        loss, dp, dl = run(layer_of(params), p, q)
        expected = math.pi - delta if antipodal else delta
        np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-13)
        assert np.all(np.isfinite(dp)) and np.all(np.isfinite(dl))
        speed = np.hypot(dp[0, 0], dp[0, 1] / math.cos(p[0, 0] * unit)) / unit
        np.testing.assert_allclose(speed, 1.0, rtol=1e-6)
        h = 1e-9 / unit                                    # 1e-9 rad
        for which, analytic in ((0, dp), (1, dl)):
            numeric = numeric_gradient(p, q, h, params, which)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6 * unit)


def test_tiny_distances_keep_relative_precision():
    # 1e-12 rad apart: the arccos form would return 0 (or 1e-8); this is exact to rounding.
    lat = 40.0
    d = 1e-12
    loss, dp, _ = run(layer_of("unit: RADIANS"), [[math.radians(lat), 1.0]], [[math.radians(lat) + d, 1.0]])
    np.testing.assert_allclose(loss, d, rtol=1e-3)
    np.testing.assert_allclose(dp[0], [-1.0, 0.0], atol=1e-6)


# --- configuration errors -----------------------------------------------------------

def test_bad_shapes_and_radius():
    layer = layer_of()
    with pytest.raises(ConfigError, match="N x 2"):
        layer.initialize([blob_of(np.zeros((4, 3))), blob_of(np.zeros((4, 3)))], [Blob(dtype=np.float64)])
    layer = layer_of()
    with pytest.raises(ConfigError, match="first dimension"):
        layer.initialize([blob_of(np.zeros((4, 2))), blob_of(np.zeros((3, 2)))], [Blob(dtype=np.float64)])
    with pytest.raises(ConfigError, match="radius"):
        layer_of("radius: -1").initialize([blob_of(np.zeros((4, 2))), blob_of(np.zeros((4, 2)))],
                                      [Blob(dtype=np.float64)])


def test_in_a_net_with_default_loss_weight():
    from dlcore import Net
    from dlcore.config import parse_text
    from dltrain.proto import caffe_pb2
    text = """
    layer { name: "in" type: "Input" top: "p" top: "y" input_param { shape { dim: 3 dim: 2 } } }
    layer { name: "loss" type: "GeolocLoss" bottom: "p" bottom: "y" top: "loss"
            geoloc_loss_param { radius: 6371 } }
    force_backward: true
    """
    net = Net(parse_text(text, caffe_pb2.NetParameter), 0)
    pred, label = random_pairs(3, 8)
    net.blobs["p"].data[...] = pred
    net.blobs["y"].data[...] = label
    out = net.forward()
    np.testing.assert_allclose(float(out["loss"]), 6371 * haversine(pred, label).mean(), rtol=1e-5)
    net.backward()
    assert np.all(np.isfinite(net.blobs["p"].diff)) and np.any(net.blobs["p"].diff != 0)
