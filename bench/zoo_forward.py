"""CPU forward time per image of the model zoo's AlexNet and GoogLeNet (and CaffeNet).

    python bench/zoo_forward.py [--batch 10] [--iterations 5] [--nets alexnet,googlenet,caffenet]
                                [--caffe PATH/TO/caffe]

Each net is configs/zoo/<net>_deploy.prototxt at batch 10 (the deploy files'
own batch) with random weights (the files' fillers) and a random input; the
first forward pass (compilation, allocation) is excluded, then the median of
``--iterations`` passes is reported as ms per image.  With ``--caffe`` (a
BVLC Caffe ``caffe`` binary built for the CPU) the same files are timed by
``caffe time -model F -iterations N`` (its "Average Forward pass", divided
by the batch) on the same machine, for a side-by-side figure.

BVLC's own published figures (no CPU figure is published for GoogLeNet):

* CaffeNet, CPU: 1.42 s for a forward pass of a batch of 50 (``%timeit
  net.forward()`` in Caffe's examples/00-classification.ipynb, "That's a
  while, even for a batch of 50 images"), i.e. about 28 ms/image on the
  notebook authors' CPU.
* CaffeNet, GPU, for scale: 1 ms/image inference on a K40 (Caffe's home
  page, caffe.berkeleyvision.org: "over 60M images per day with a single
  NVIDIA K40 GPU"); 100 s for the 50,000 validation images, 2 ms/image, in
  docs/performance_hardware.md.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PUBLISHED = {"caffenet": "~28 ms/image (BVLC 00-classification notebook: 1.42 s / batch of 50, CPU)",
             "alexnet": "same layer sizes as CaffeNet: ~28 ms/image",
             "googlenet": "no BVLC CPU figure published"}


def zoo_file(name):
    return os.path.join(ROOT, "configs", "zoo", f"{name}_deploy.prototxt")


def time_dltrain(name, batch, iterations):
    import dlcore
    import layers  # noqa: F401
    from dlcore.config import load_net
    param = load_net(zoo_file(name))
    param.layer[0].input_param.shape[0].dim[0] = batch
    net = dlcore.Net(param, dlcore.TEST)
    x = np.random.default_rng(0).uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    net.forward(data=x)                                   # warm-up: compilation and allocation
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        net.forward(data=x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3 / batch


def time_caffe(binary, name, batch, iterations, tmp):
    """BVLC Caffe's `caffe time` forward figure (ms/image), or None."""
    from dlcore.config import load_net, to_prototxt
    param = load_net(zoo_file(name))
    param.layer[0].input_param.shape[0].dim[0] = batch
    path = os.path.join(tmp, f"{name}_b{batch}.prototxt")
    with open(path, "w") as f:
        f.write(to_prototxt(param))
    # `caffe time` runs forward and backward; the deploy nets need force_backward for the backward
    # half to do anything, but only its forward average is used here.
    proc = subprocess.run([binary, "time", "-model", path, "-iterations", str(iterations)],
                          capture_output=True, text=True)
    match = re.search(r"Average Forward pass: ([0-9.]+) ms", proc.stderr)
    if proc.returncode != 0 or not match:
        print(f"  caffe time failed for {name}: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return float(match.group(1)) / batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--nets", default="alexnet,googlenet", help="comma-separated: alexnet, googlenet, "
                                                                     "caffenet, cifar10_quick, ...")
    parser.add_argument("--caffe", help="a BVLC Caffe `caffe` binary (CPU build) to time on this machine too")
    args = parser.parse_args(argv)
    import tempfile
    print(f"CPU forward time per image, batch {args.batch}, median of {args.iterations} passes "
          f"(warm-up excluded); {os.cpu_count()} CPU cores visible")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            ms = time_dltrain(name, args.batch, args.iterations)
            line = f"  {name:10s} dltrain {ms:8.1f} ms/image"
            caffe_ms = time_caffe(args.caffe, name, args.batch, args.iterations, tmp) if args.caffe else None
            if caffe_ms is not None:
                line += f"   BVLC Caffe (same machine) {caffe_ms:8.1f} ms/image   ratio {ms / caffe_ms:.2f}x"
            line += f"   published: {PUBLISHED.get(name, '-')}"
            print(line, flush=True)
            results[name] = (ms, caffe_ms)
    return results


if __name__ == "__main__":
    main()
