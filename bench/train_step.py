"""The full LeNet training step, dltrain vs PyTorch CPU, and dltrain's start-up time.

    python bench/train_step.py [--iterations 50] [--rounds 5] [--startup-runs 3]

1. Training step (batch 64, 1x28x28, configs/lenet/lenet.prototxt): forward,
   backward and an SGD update with momentum 0.9 and weight decay 5e-4
   (Caffe's lr_mult 2 on biases reproduced with a torch param group).
   dltrain runs its real solver loop (``solver.step``); PyTorch runs
   ``zero_grad, forward, loss, backward, optimizer.step``.  Both on the same
   random batch, warm-up (and compilation) excluded, rounds interleaved so
   machine noise hits both alike; the figure is the median round.
2. Start to first iteration: ``dltrain train`` on a LeNet solver in a fresh
   process, from the process start to its ``Iteration 0, loss`` log line
   (one forward/backward done), with a warm Numba kernel cache (a first
   run fills the cache and is not counted).

Needs torch (``pip install torch==2.13.0``), used here as the reference only.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LENET = os.path.join(ROOT, "configs", "lenet", "lenet.prototxt")
SOLVER = """net: "{net}"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: {max_iter}
display: {display}
snapshot_after_train: false
random_seed: 1
solver_mode: CPU
"""


def dltrain_step():
    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    solver = get_solver(solver_from_string(SOLVER.format(net=LENET, max_iter=10 ** 9, display=0)))
    solver.progress_enabled = False
    net = solver.net
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random((64, 1, 28, 28), dtype=np.float32)
    net.blobs["label"].data[...] = rng.integers(0, 10, 64)

    def run(iterations):
        solver.step(iterations)
        return solver.smoothed_loss
    return run


def torch_step():
    import torch
    from torch import nn
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD([{"params": weights, "lr": 0.01}, {"params": biases, "lr": 0.02}],
                                lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)

    def run(iterations):
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        return float(loss.detach())
    return run


def time_round(run, iterations):
    start = time.perf_counter()
    run(iterations)
    return (time.perf_counter() - start) / iterations * 1e3


def bench_step(iterations, rounds):
    import torch
    runs = {"dltrain": dltrain_step(), "torch": torch_step()}
    for run in runs.values():        # compile / warm up
        run(5)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(time_round(run, iterations))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"LeNet training step (forward + backward + SGD momentum 0.9, weight decay 5e-4), batch 64, 1x28x28; "
          f"median of {rounds} rounds x {iterations} iterations")
    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads")
    for name in runs:
        print(f"  {name:8s} {med[name]:8.2f} ms/iter   (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"ratio dltrain/torch: {med['dltrain'] / med['torch']:.2f}  (below 1 means dltrain is faster)")


def start_to_first_iteration(folder):
    """Seconds from spawning `dltrain train` to its `Iteration 0, loss` line."""
    solver = os.path.join(folder, "solver.prototxt")
    with open(solver, "w") as f:
        f.write(SOLVER.format(net=LENET, max_iter=1, display=1))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dltrain.cli.main", "train", "--solver", solver], cwd=folder, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = solving = None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if solving is None and "] Solving " in line:
            solving = time.perf_counter() - start
        if "Iteration 0, loss" in line:
            first = time.perf_counter() - start
            break
    proc.communicate()
    if first is None:
        raise RuntimeError("dltrain train failed:\n" + "".join(lines[-20:]))
    return solving, first


def bench_startup(runs):
    with tempfile.TemporaryDirectory() as folder:
        start_to_first_iteration(folder)          # fills the kernel cache if it is cold
        results = [start_to_first_iteration(folder) for _ in range(runs)]
    solving = statistics.median(r[0] for r in results)
    first = statistics.median(r[1] for r in results)
    print(f"dltrain start to first iteration (LeNet, warm kernel cache), median of {runs} runs: "
          f"{first:.2f} s  (setup done, 'Solving' logged, at {solving:.2f} s; "
          f"runs: {', '.join(f'{r[1]:.2f}' for r in results)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--startup-runs", type=int, default=3)
    args = parser.parse_args()
    bench_step(args.iterations, args.rounds)
    if args.startup_runs:
        bench_startup(args.startup_runs)


if __name__ == "__main__":
    main()
