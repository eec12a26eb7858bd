"""GPU benchmarks: dltrain on the GPU against PyTorch CUDA (cuDNN) on the same machine.

    python bench/gpu_bench.py [--iterations 30] [--rounds 5] [--out FOLDER]

1. LeNet training step, batch 64 (configs/lenet/lenet.prototxt; SGD momentum
   0.9, weight decay 5e-4): dltrain's real solver loop (``solver.step``) on the
   GPU vs ``zero_grad, forward, loss, backward, optimizer.step`` in PyTorch.
2. LSTM training step, T=20, N=32, input 64, hidden 256 (bench/lstm.py's net:
   LSTM -> EuclideanLoss, SGD momentum 0.9) vs ``nn.LSTM`` (cuDNN).
3. Convolution forward on AlexNet's conv2-conv5 shapes, batch 32: dltrain's
   implicit-GEMM kernel in GFLOP/s and as a share of the GPU's fp32 peak
   (looked up from the device name), with PyTorch's cuDNN convolution
   (fp32, TF32 off) beside it.

Timing: compilation and warm-up excluded; ``cuda.synchronize()`` before
the clock starts and before it stops; rounds interleave dltrain and
PyTorch; the figure is the median round.  Results go to stdout and, with
``--out`` (default: $OUT if set), to gpu_bench.txt and gpu_bench.json there.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

# fp32 (non-tensor-core) peak, TFLOP/s, by device-name fragment (first match wins)
FP32_PEAK_TFLOPS = [
    ("H200", 66.9), ("H100 SXM", 66.9), ("H100 80GB HBM3", 66.9), ("H100 NVL", 60.0), ("H100 PCIe", 51.2),
    ("H100", 66.9), ("GH200", 66.9), ("A100", 19.5), ("A10G", 31.2), ("A10", 31.2), ("L40S", 91.6), ("L40", 90.5),
    ("L4", 30.3), ("V100", 15.7), ("T4", 8.1), ("RTX 4090", 82.6), ("RTX 3090", 35.6), ("A6000", 38.7),
]

ALEXNET = [  # name, C, H, W, M, k, stride, pad, group
    ("conv2", 96, 27, 27, 256, 5, 1, 2, 2),
    ("conv3", 256, 13, 13, 384, 3, 1, 1, 1),
    ("conv4", 384, 13, 13, 384, 3, 1, 1, 2),
    ("conv5", 384, 13, 13, 256, 3, 1, 1, 2),
]

LINES = []


def say(text=""):
    print(text, flush=True)
    LINES.append(text)


def fp32_peak(name):
    for fragment, peak in FP32_PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return peak, fragment
    return None, None


def synchronize():
    from numba import cuda
    cuda.synchronize()


def torch_sync():
    import torch
    torch.cuda.synchronize()


def timed(run, iterations, sync):
    sync()
    start = time.perf_counter()
    run(iterations)
    sync()
    return (time.perf_counter() - start) / iterations * 1e3


def compare(runs, syncs, iterations, rounds):
    """Median ms per iteration of each run (rounds interleaved)."""
    for name, run in runs.items():
        run(3)
        syncs[name]()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run, iterations, syncs[name]))
    return {name: statistics.median(t) for name, t in times.items()}, times


# --- LeNet -----------------------------------------------------------------------------------------

LENET_SOLVER = """net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: 1000000000
display: 0
snapshot_after_train: false
random_seed: 1
solver_mode: GPU
"""


def dltrain_lenet():
    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    with contextlib.redirect_stderr(io.StringIO()):
        solver = get_solver(solver_from_string(LENET_SOLVER.format(net=os.path.join(ROOT, "configs", "lenet",
                                                                                     "lenet.prototxt"))), gpu=True)
    solver.progress_enabled = False
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.random((64, 1, 28, 28), dtype=np.float32)
    solver.net.blobs["label"].data[...] = rng.integers(0, 10, 64)

    def run(iterations):
        solver.step(iterations)
    return run, solver


def torch_lenet():
    import torch
    from torch import nn
    dev = torch.device("cuda")
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10)).to(dev)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD([{"params": weights, "lr": 0.01}, {"params": biases, "lr": 0.02}],
                                lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen).to(dev)
    y = torch.randint(0, 10, (64,), generator=gen).to(dev)

    def run(iterations):
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            float(loss)          # the loss read back every iteration, as dltrain's solver does
    return run


# --- LSTM ------------------------------------------------------------------------------------------

def dltrain_lstm():
    import lstm as lstm_bench
    from google.protobuf import text_format

    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    param = solver_from_string(lstm_bench.SOLVER)
    text_format.Parse(lstm_bench.NET, param.net_param)
    with contextlib.redirect_stderr(io.StringIO()):
        solver = get_solver(param, gpu=True)
    solver.progress_enabled = False
    x, cont, target = lstm_bench.data()
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["cont"].data[...] = cont
    solver.net.blobs["target"].data[...] = target

    def run(iterations):
        solver.step(iterations)
    return run


def torch_lstm():
    import lstm as lstm_bench
    import torch
    from torch import nn
    dev = torch.device("cuda")
    torch.manual_seed(0)
    T, D, H = lstm_bench.T, lstm_bench.D, lstm_bench.H
    model = nn.LSTM(D, H).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lstm_bench.LR, momentum=lstm_bench.MOMENTUM)
    x, _, target = (torch.from_numpy(a).to(dev) for a in lstm_bench.data())

    def run(iterations):
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=False)
            h, _ = model(x)
            loss = ((h - target) ** 2).sum() / (2 * T)
            loss.backward()
            optimizer.step()
            float(loss)
    return run


# --- convolution GFLOP/s -----------------------------------------------------------------------------

def conv_layer(C, H, W, M, k, stride, pad, group, batch):
    from google.protobuf import text_format

    from dlcore import Blob
    from dlcore.registry import get_layer_class
    from dltrain.proto import caffe_pb2
    lp = text_format.Parse(f'name: "conv" type: "Convolution" convolution_param {{ num_output: {M} kernel_size: {k} '
                           f'stride: {stride} pad: {pad} group: {group} weight_filler {{ type: "gaussian" std: 0.01 }} '
                           f'bias_filler {{ type: "constant" value: 0.1 }} }}', caffe_pb2.LayerParameter())
    layer = get_layer_class("Convolution")(lp)
    layer.gpu = True
    bottom, top = [Blob(batch, C, H, W)], [Blob()]
    bottom[0].data[...] = np.random.default_rng(0).standard_normal(bottom[0].shape, dtype=np.float32)
    layer.initialize(bottom, top)
    return layer, bottom, top


def bench_conv(batch, iterations, peak):
    import torch
    from dltrain.layers import convolution_cuda
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    results = []
    say(f"Convolution forward, AlexNet conv2-conv5 shapes, batch {batch}, fp32"
        + (f" (device fp32 peak {peak:.1f} TFLOP/s)" if peak else ""))
    for name, C, H, W, M, k, stride, pad, group in ALEXNET:
        layer, bottom, top = conv_layer(C, H, W, M, k, stride, pad, group, batch)
        flops = convolution_cuda.flops_forward(layer)

        def run_d(n, layer=layer, bottom=bottom, top=top):
            for _ in range(n):
                layer.forward(bottom, top)
        dev = torch.device("cuda")
        x = torch.from_numpy(bottom[0].cpu_data().copy()).to(dev)
        conv = torch.nn.Conv2d(C, M, k, stride=stride, padding=pad, groups=group).to(dev)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.blobs[0].cpu_data().copy()))
            conv.bias.copy_(torch.from_numpy(layer.blobs[1].cpu_data().copy()))

        def run_t(n, conv=conv, x=x):
            with torch.no_grad():
                for _ in range(n):
                    conv(x)
        med, _ = compare({"dltrain": run_d, "torch": run_t}, {"dltrain": synchronize, "torch": torch_sync},
                         iterations, 5)
        # same numbers?
        with torch.no_grad():
            ref = conv(x).cpu().numpy()
        layer.forward(bottom, top)
        err = float(np.abs(top[0].data - ref).max() / max(np.abs(ref).max(), 1e-30))
        gf_d = flops / med["dltrain"] / 1e6
        gf_t = flops / med["torch"] / 1e6
        share = f", {100 * gf_d / (peak * 1e3):.1f}% of peak" if peak else ""
        say(f"  {name}: {C}x{H}x{W} -> {M}, k{k} s{stride} p{pad} g{group}: dltrain {med['dltrain']:.3f} ms "
            f"= {gf_d:,.0f} GFLOP/s{share}; cuDNN {med['torch']:.3f} ms = {gf_t:,.0f} GFLOP/s; "
            f"dltrain/cuDNN time {med['dltrain'] / med['torch']:.2f}; max rel. diff {err:.1e}")
        results.append(dict(name=name, gflops=gf_d, torch_gflops=gf_t, ms=med["dltrain"], torch_ms=med["torch"],
                            peak_share=(gf_d / (peak * 1e3) if peak else None), max_rel_diff=err))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conv-batch", type=int, default=32)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--skip", default="", help="comma-separated: lenet, lstm, conv")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    from dlcore import backend
    backend.set_mode_gpu(0)
    name = backend.device_name(0)
    peak, fragment = fp32_peak(name)
    import numba
    say(f"device: {name}; fp32 peak {peak if peak else 'unknown'} TFLOP/s"
        + (f" (table entry '{fragment}')" if fragment else "") + f"; numba {numba.__version__}; "
        f"torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()})")
    report = {"device": name, "fp32_peak_tflops": peak}

    if "lenet" not in skip:
        start = time.perf_counter()
        run_d, solver = dltrain_lenet()
        run_d(2)                     # compiles every kernel of the step
        synchronize()
        compile_s = time.perf_counter() - start
        med, _ = compare({"dltrain": run_d, "torch": torch_lenet()},
                         {"dltrain": synchronize, "torch": torch_sync}, args.iterations, args.rounds)
        say(f"LeNet training step, batch 64 (forward + backward + SGD momentum 0.9, weight decay 5e-4); median of "
            f"{args.rounds} rounds x {args.iterations} iterations (dltrain's set-up and first compilation "
            f"{compile_s:.1f} s, excluded)")
        say(f"  dltrain GPU {med['dltrain']:.3f} ms/iter, PyTorch CUDA {med['torch']:.3f} ms/iter: "
            f"ratio dltrain/torch {med['dltrain'] / med['torch']:.2f} (goal: <= 3)")
        report["lenet"] = dict(dltrain_ms=med["dltrain"], torch_ms=med["torch"], ratio=med["dltrain"] / med["torch"])

    if "lstm" not in skip:
        med, _ = compare({"dltrain": dltrain_lstm(), "torch": torch_lstm()},
                         {"dltrain": synchronize, "torch": torch_sync}, args.iterations, args.rounds)
        say("LSTM training step, T=20 N=32 input 64 hidden 256 (forward + backward + SGD momentum 0.9), "
            f"median of {args.rounds} rounds x {args.iterations} iterations")
        say(f"  dltrain GPU {med['dltrain']:.3f} ms/iter, PyTorch CUDA (cuDNN LSTM) {med['torch']:.3f} ms/iter: "
            f"ratio dltrain/torch {med['dltrain'] / med['torch']:.2f} (goal: <= 3)")
        report["lstm"] = dict(dltrain_ms=med["dltrain"], torch_ms=med["torch"], ratio=med["dltrain"] / med["torch"])

    if "conv" not in skip:
        report["conv"] = bench_conv(args.conv_batch, max(5, args.iterations // 2), peak)
        if peak:
            shares = [r["peak_share"] for r in report["conv"]]
            say(f"  convolution forward: {100 * min(shares):.1f}% to {100 * max(shares):.1f}% of fp32 peak "
                "(goal: >= 25%)")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_bench.txt"), "w") as f:
            f.write("\n".join(LINES) + "\n")
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
