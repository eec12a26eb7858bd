"""LSTM training step (T=20, N=32, 64 inputs, 256 hidden): dltrain vs PyTorch CPU, in one run.

    python bench/lstm.py [--iterations 30] [--rounds 7] [--threads K]

Both sides run the same net and the same update on the same random data:

* net: x (20 x 32 x 64) and cont -> LSTM(256) -> EuclideanLoss against a
  fixed random target (20 x 32 x 256): loss = sum((h - target)^2) / T / 2,
  Caffe's EuclideanLoss (it divides by the first axis, T);
* cont is 0 at t = 0 and 1 after it, so every batch is a fresh sequence of
  20 steps, exactly what nn.LSTM computes from its zero initial state;
* update: SGD, lr 0.01, momentum 0.9 (dltrain's real solver loop,
  ``solver.step``; PyTorch ``zero_grad, forward, loss, backward,
  optimizer.step``).  Weights start uniform in +-1/sqrt(256) on both sides.

Compilation and warm-up are excluded; the rounds interleave the two sides
so machine noise hits both alike; the figure is the median round.  The
machine's load average is printed: on a shared machine, read the ratio,
not the absolute numbers.  ``--threads K`` sets both sides' BLAS/OpenMP
thread count (default: each library's own default; dltrain's LSTM then
splits each step's hidden units across Numba's threads, each running BLAS
single-threaded, see layers/recurrent.py); ``--threads 1`` makes both
sides single-threaded.
Needs torch (``pip install torch==2.13.0``), used here as the reference only.
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

T, N, D, H = 20, 32, 64, 256
LR, MOMENTUM = 0.01, 0.9

NET = f"""
name: "lstm_bench"
layer {{ name: "input" type: "Input" top: "x" top: "cont" top: "target"
        input_param {{ shape {{ dim: {T} dim: {N} dim: {D} }} shape {{ dim: {T} dim: {N} }}
                      shape {{ dim: {T} dim: {N} dim: {H} }} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param {{ num_output: {H} weight_filler {{ type: "uniform" min: -0.0625 max: 0.0625 }}
                          bias_filler {{ type: "uniform" min: -0.0625 max: 0.0625 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }}
"""

SOLVER = f"""
base_lr: {LR}
lr_policy: "fixed"
momentum: {MOMENTUM}
max_iter: 1000000000
display: 0
snapshot_after_train: false
random_seed: 1
solver_mode: CPU
"""


def data():
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    target = (0.5 * rng.standard_normal((T, N, H))).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    return x, cont, target


def dltrain_step():
    from google.protobuf import text_format
    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    param = solver_from_string(SOLVER)
    text_format.Parse(NET, param.net_param)
    with contextlib.redirect_stderr(io.StringIO()):      # the solver's set-up log
        solver = get_solver(param)
    solver.progress_enabled = False
    net = solver.net
    x, cont, target = data()
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = cont
    net.blobs["target"].data[...] = target

    def run(iterations):
        solver.step(iterations)
        return solver.smoothed_loss
    return run


def torch_step():
    import torch
    from torch import nn
    torch.manual_seed(0)
    lstm = nn.LSTM(D, H)          # default init: uniform(+-1/sqrt(H))
    optimizer = torch.optim.SGD(lstm.parameters(), lr=LR, momentum=MOMENTUM)
    x, _, target = (torch.from_numpy(a) for a in data())

    def run(iterations):
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=False)
            h, _ = lstm(x)
            loss = ((h - target) ** 2).sum() / (2 * T)
            loss.backward()
            optimizer.step()
        return float(loss.detach())
    return run


def time_round(run, iterations):
    start = time.perf_counter()
    run(iterations)
    return (time.perf_counter() - start) / iterations * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both sides (OpenBLAS/Numba and torch); default: library defaults")
    args = parser.parse_args()
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        if args.threads == 1:
            os.environ["DLTRAIN_RNN_OVERLAP"] = "0"     # the recurrent layers' second thread
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {"dltrain": dltrain_step(), "torch": torch_step()}
    for run in runs.values():        # compile / warm up
        run(5)
    load_before = os.getloadavg()[0]
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(time_round(run, args.iterations))
    load_after = os.getloadavg()[0]
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"LSTM training step (forward + backward + SGD momentum {MOMENTUM}), T={T} N={N} input {D} hidden {H}, "
          f"EuclideanLoss; median of {args.rounds} rounds x {args.iterations} iterations")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before:.2f} -> {load_after:.2f}; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    for name in runs:
        print(f"  {name:8s} {med[name]:8.2f} ms/iter median, {min(times[name]):8.2f} min   "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"ratio dltrain/torch: {med['dltrain'] / med['torch']:.2f} median, "
          f"{min(times['dltrain']) / min(times['torch']):.2f} min  (below 1 means dltrain is faster)")


if __name__ == "__main__":
    main()
