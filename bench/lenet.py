"""LeNet forward+backward (batch 64, 1x28x28): dltrain vs PyTorch CPU, in one run.

    python bench/lenet.py [--iterations 50] [--rounds 5] [--threads N]

Both run the same net (conv 20x5x5, max pool 2, conv 50x5x5, max pool 2,
InnerProduct 500, ReLU, InnerProduct 10, SoftmaxWithLoss) on the same random
batch.  Compilation and warm-up are excluded; the rounds interleave the two
so machine noise hits both alike; the figure is the median round.
Needs torch (`pip install torch==2.13.0`), used here as the reference only.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def dltrain_step():
    import numpy as np
    import dlcore
    net = dlcore.Net(os.path.join(ROOT, "configs", "lenet", "lenet.prototxt"), dlcore.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random((64, 1, 28, 28), dtype=np.float32)
    net.blobs["label"].data[...] = rng.integers(0, 10, 64)

    def step():
        net.clear_param_diffs()
        return net.forward_backward()
    return step


def torch_step():
    import torch
    from torch import nn
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)

    def step():
        model.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        return float(loss)
    return step


def time_round(step, iterations):
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both sides (BLAS, Numba, torch); 0 = each library's default")
    args = parser.parse_args()
    if args.threads:   # must be set before numpy/numba/torch start their pools
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {"dltrain": dltrain_step(), "torch": torch_step()}
    for step in steps.values():      # compile / warm up
        for _ in range(5):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(time_round(step, args.iterations))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"LeNet forward+backward, batch 64, 1x28x28; median of {args.rounds} rounds x {args.iterations} iterations")
    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads")
    for name in steps:
        print(f"  {name:8s} {med[name]:8.2f} ms/iter   (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"ratio dltrain/torch: {med['dltrain'] / med['torch']:.2f}  (below 1 means dltrain is faster)")


if __name__ == "__main__":
    main()
