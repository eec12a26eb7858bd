"""What bench/caffenet.py and bench/googlenet.py share: a zoo deploy net, forward+backward, dltrain vs
PyTorch CPU in one run.

The net is configs/zoo/<name>_deploy.prototxt at the given batch, TEST phase
(Dropout passes data through, on both sides), ``force_backward`` so backward
runs through every layer down to the input; the gradient seed is a fixed
random diff on the top (``prob``).  The PyTorch model is built here from
the same prototxt, layer by layer (Convolution with groups, ReLU, Pooling
in Caffe's ceil mode, LRN across channels, InnerProduct, Concat, Softmax),
and gets dltrain's weights; the outputs are checked to agree before timing.
Compilation and warm-up are excluded; dltrain and PyTorch rounds
interleave; figures are medians with the spread (min-max) shown.

Then, for dltrain only, a ``dltrain time``-style per-layer split (ms), and
each convolution's GFLOP/s forward and backward against the machine's
float32 GEMM peak (NumPy matmul on a large square, best of a few).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(doc, iterations, rounds):
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=iterations, help="passes per round")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (dltrain: BLAS's default)")
    parser.add_argument("--layer-iterations", type=int, default=3, help="passes for the per-layer split")
    return parser.parse_args()


# ---------------------------------------------------------------------------
# dltrain
# ---------------------------------------------------------------------------

def dltrain_net(name, batch):
    import dlcore
    import dltrain.layers  # noqa: F401
    from dlcore.config import load_net
    param = load_net(os.path.join(ROOT, "configs", "zoo", f"{name}_deploy.prototxt"))
    param.layer[0].input_param.shape[0].dim[0] = batch
    param.force_backward = True
    net = dlcore.Net(param, dlcore.TEST)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    out = net.outputs[0]
    net.blobs[out].diff[...] = rng.standard_normal(net.blobs[out].shape).astype(np.float32)
    return net, param


def dltrain_steps(net):
    n = len(net.layers)
    out = net.outputs[0]
    seed = net.blobs[out].diff.copy()

    def forward():
        net.forward_from_to(0, n - 1)

    def forward_backward():
        net.forward_from_to(0, n - 1)
        net.blobs[out].diff[...] = seed
        net.backward_from_to(n - 1, 0)
    return forward, forward_backward


def per_layer_ms(net, iterations):
    """``dltrain time``'s split: (name, type, forward ms, backward ms) per layer, averaged."""
    from dltrain.cli.time_cmd import time_layers
    fwd, bwd = time_layers(net, iterations)
    k = 1e3 / iterations
    return [(name, layer.type, fwd[i] * k, bwd[i] * k)
            for i, (name, layer) in enumerate(zip(net.layer_names, net.layers))]


def conv_flops(net):
    """Layer name -> forward multiply-adds x 2 of each Convolution (backward: twice that, less the data
    gradient where none is computed)."""
    flops = {}
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        if layer.type != "Convolution":
            continue
        f = 2.0 * layer.matrix_work()
        down = any(net.bottom_need_backward[i])
        flops[name] = (f, f * (2 if down else 1))
    return flops


def gemm_peak(size=2048, repeats=5):
    """float32 GEMM GFLOP/s of NumPy's BLAS on a size x size square (best of ``repeats``)."""
    rng = np.random.default_rng(1)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------
# PyTorch: the same net, built from the prototxt
# ---------------------------------------------------------------------------

def torch_model(param, net):
    """A callable (input tensor -> output tensor) computing the prototxt's net with dltrain's weights."""
    import torch
    import torch.nn.functional as F
    from dltrain.proto import caffe_pb2 as pb
    ops = []          # (function, bottom names, top names)
    P = pb.PoolingParameter
    for lp in param.layer:
        t = lp.type
        if t == "Input":
            continue
        blobs = net.params.get(lp.name, [])
        tensors = [torch.from_numpy(b.data.copy()).requires_grad_(True) for b in blobs]
        if t == "Convolution":
            cp = lp.convolution_param
            k = int(cp.kernel_size[0])
            s = int(cp.stride[0]) if len(cp.stride) else 1
            p = int(cp.pad[0]) if len(cp.pad) else 0
            g = int(cp.group)
            fn = (lambda w, b, s, p, g: lambda x: F.conv2d(x, w, b, s, p, 1, g))(
                tensors[0], tensors[1] if len(tensors) > 1 else None, s, p, g)
        elif t == "ReLU":
            fn = F.relu
        elif t == "Pooling":
            pp = lp.pooling_param
            k, s, p = int(pp.kernel_size), int(pp.stride), int(pp.pad)
            if pp.pool == P.MAX:
                fn = (lambda k, s, p: lambda x: F.max_pool2d(x, k, s, p, ceil_mode=True))(k, s, p)
            elif pp.pool == P.AVE:
                fn = (lambda k, s, p: lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=True,
                                                             count_include_pad=True))(k, s, p)
            else:
                raise SystemExit(f"bench: pooling method {pp.pool} not mirrored")
        elif t == "LRN":
            rp = lp.lrn_param
            if rp.norm_region != pb.LRNParameter.ACROSS_CHANNELS:
                raise SystemExit("bench: only across-channel LRN is mirrored")
            # torch's formula is Caffe's: x / (k + alpha/n * sum of squares over n channels)^beta
            fn = (lambda n, a, b, k: lambda x: F.local_response_norm(x, n, a, b, k))(
                int(rp.local_size), float(rp.alpha), float(rp.beta), float(rp.k))
        elif t == "InnerProduct":
            fn = (lambda w, b: lambda x: F.linear(x.flatten(1), w, b))(
                tensors[0], tensors[1] if len(tensors) > 1 else None)
        elif t == "Dropout":
            fn = (lambda x: x)          # TEST phase: data passes through
        elif t == "Concat":
            fn = (lambda *xs: torch.cat(xs, 1))
        elif t == "Softmax":
            fn = (lambda x: F.softmax(x, 1))
        else:
            raise SystemExit(f"bench: layer type {t} not mirrored")
        ops.append((fn, list(lp.bottom), list(lp.top), tensors))
    params = [w for op in ops for w in op[3]]
    inp = param.layer[0].top[0]

    def run(x):
        blobs = {inp: x}
        for fn, bottoms, tops, _ in ops:
            blobs[tops[0]] = fn(*[blobs[b] for b in bottoms])
        return blobs[ops[-1][2][0]]
    return run, params


def torch_steps(run, params, x_np, seed_np):
    import torch
    x = torch.from_numpy(x_np.copy()).requires_grad_(True)    # force_backward: the input's gradient too
    seed = torch.from_numpy(seed_np.copy())

    def forward():
        with torch.no_grad():
            run(x)

    def forward_backward():
        for p in params + [x]:
            p.grad = None
        run(x).backward(seed)
    return forward, forward_backward


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def time_round(step, iterations):
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations * 1e3


def main(name, title, doc, iterations, rounds):
    args = parse_args(doc, iterations, rounds)
    import torch
    torch.set_num_threads(args.threads)
    net, param = dltrain_net(name, args.batch)
    out = net.outputs[0]
    d_fwd, d_fb = dltrain_steps(net)
    run, params = torch_model(param, net)
    t_fwd, t_fb = torch_steps(run, params, net.blobs["data"].data, net.blobs[out].diff)
    # warm-up (compilation, allocation) and a check that both compute the same net
    for step in (d_fb, t_fb, d_fwd, t_fwd):
        step()
    with torch.no_grad():
        ref = run(torch.from_numpy(net.blobs["data"].data.copy())).numpy()
    err = float(np.abs(ref - net.blobs[out].data).max())
    if err > 1e-4:
        raise SystemExit(f"bench: dltrain and PyTorch disagree on {out} (max |diff| {err:.3g})")
    steps = {("dltrain", "fwd+bwd"): d_fb, ("torch", "fwd+bwd"): t_fb,
             ("dltrain", "fwd"): d_fwd, ("torch", "fwd"): t_fwd}
    times = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(time_round(step, args.iterations))
    med = {key: statistics.median(t) for key, t in times.items()}
    print(f"{title}, batch {args.batch}; median of {args.rounds} rounds x {args.iterations} passes "
          f"(outputs agree to {err:.1e})")
    print(f"machine: {os.cpu_count()} CPUs; numpy {np.__version__}; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads")
    for what in ("fwd+bwd", "fwd"):
        for who in ("dltrain", "torch"):
            t = times[(who, what)]
            print(f"  {what:8s} {who:8s} {med[(who, what)]:9.1f} ms   (spread {min(t):.1f}-{max(t):.1f})")
        print(f"  {what:8s} ratio dltrain/torch: {med[('dltrain', what)] / med[('torch', what)]:.2f}"
              "  (below 1: dltrain is faster)")
    peak = gemm_peak()
    layers = per_layer_ms(net, args.layer_iterations)
    flops = conv_flops(net)
    print(f"\nfloat32 GEMM peak (NumPy matmul 2048^2): {peak:.0f} GFLOP/s")
    print(f"dltrain per layer (ms, mean of {args.layer_iterations} passes; conv GFLOP/s and % of peak):")
    print(f"  {'layer':>28s} {'type':>13s} {'fwd':>8s} {'bwd':>8s}   conv fwd / bwd GFLOP/s")
    total_f = total_b = 0.0
    for lname, ltype, f, b in layers:
        total_f += f
        total_b += b
        extra = ""
        if lname in flops:
            ff, fb = flops[lname]
            gf, gb = ff / f / 1e6, (fb / b / 1e6 if b else 0.0)
            extra = f"   {gf:6.1f} ({gf / peak:4.0%}) / {gb:6.1f} ({gb / peak:4.0%})"
        print(f"  {lname:>28s} {ltype:>13s} {f:8.2f} {b:8.2f}{extra}")
    by_type = {}
    for _, ltype, f, b in layers:
        s = by_type.setdefault(ltype, [0.0, 0.0])
        s[0] += f
        s[1] += b
    print(f"  {'total':>28s} {'':>13s} {total_f:8.2f} {total_b:8.2f}")
    print("  by type: " + ", ".join(f"{k} {v[0]:.1f}+{v[1]:.1f}"
                                     for k, v in sorted(by_type.items(), key=lambda kv: -sum(kv[1]))))
    conv_f = sum(v[0] for v in flops.values())
    conv_b = sum(v[1] for v in flops.values())
    cf, cb = by_type.get("Convolution", (1, 1))
    print(f"  all convolutions: {conv_f / cf / 1e6:.1f} GFLOP/s forward, {conv_b / cb / 1e6:.1f} backward")
