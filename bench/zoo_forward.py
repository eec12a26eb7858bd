"""CPU forward time per image of the model zoo's AlexNet and GoogLeNet (and CaffeNet).

    python bench/zoo_forward.py [--batch 10] [--iterations 3] [--rounds 5] [--nets alexnet,googlenet,caffenet]
                                [--caffe PATH/TO/caffe]

Each net is configs/zoo/<net>_deploy.prototxt at batch 10 (the deploy files'
own batch) with random weights (the files' fillers) and a random input; the
first forward pass (compilation, allocation) is excluded.  Each round times
``--iterations`` passes and keeps the fastest; the figure is the best round
(as timeit reports), in ms per image.  With ``--caffe`` (a BVLC Caffe
``caffe`` binary built for the CPU) each round also runs ``caffe time -model
F -iterations N`` on the same file (its "Average Forward pass", divided by
the batch), interleaved with dltrain's rounds, and the best round is kept.

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


def dltrain_net(name, batch):
    """A forward pass of the zoo net at ``batch`` (warmed up), as a function."""
    import dlcore
    import dltrain.layers  # noqa: F401
    from dlcore.config import load_net
    param = load_net(zoo_file(name))
    param.layer[0].input_param.shape[0].dim[0] = batch
    net = dlcore.Net(param, dlcore.TEST)
    x = np.random.default_rng(0).uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    net.forward(data=x)                                   # warm-up: compilation and allocation

    def forward():
        start = time.perf_counter()
        net.forward(data=x)
        return time.perf_counter() - start
    return forward


def caffe_model(name, batch, tmp):
    from dlcore.config import load_net, to_prototxt
    param = load_net(zoo_file(name))
    param.layer[0].input_param.shape[0].dim[0] = batch
    path = os.path.join(tmp, f"{name}_b{batch}.prototxt")
    with open(path, "w") as f:
        f.write(to_prototxt(param))
    return path


def time_caffe(binary, model, iterations):
    """BVLC Caffe's `caffe time` average forward pass (ms), or None.  (`caffe time` also runs
    a backward pass, which does nothing in a deploy net without force_backward.)"""
    proc = subprocess.run([binary, "time", "-model", model, "-iterations", str(iterations)],
                          capture_output=True, text=True)
    match = re.search(r"Average Forward pass: ([0-9.]+) ms", proc.stderr)
    if proc.returncode != 0 or not match:
        print(f"  caffe time failed for {model}: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return float(match.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3, help="forward passes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nets", default="alexnet,googlenet", help="comma-separated: alexnet, googlenet, "
                                                                     "caffenet, cifar10_quick, ...")
    parser.add_argument("--caffe", help="a BVLC Caffe `caffe` binary (CPU build) to time on this machine too")
    args = parser.parse_args(argv)
    import tempfile
    print(f"CPU forward time per image, batch {args.batch}: best of {args.rounds} rounds of {args.iterations} "
          f"passes (warm-up excluded; dltrain and Caffe interleaved round by round, so load from other "
          f"processes hits both); {os.cpu_count()} CPU cores visible")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            forward = dltrain_net(name, args.batch)
            model = caffe_model(name, args.batch, tmp) if args.caffe else None
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(min(forward() for _ in range(args.iterations)) * 1e3 / args.batch)
                if model:
                    ms = time_caffe(args.caffe, model, args.iterations)
                    if ms is not None:
                        theirs.append(ms / args.batch)
            ms, caffe_ms = min(ours), (min(theirs) if theirs else None)
            line = f"  {name:10s} dltrain {ms:8.1f} ms/image"
            if caffe_ms is not None:
                line += f"   BVLC Caffe (same machine) {caffe_ms:8.1f} ms/image   ratio {ms / caffe_ms:.2f}x"
            line += f"   published: {PUBLISHED.get(name, '-')}"
            print(line, flush=True)
            results[name] = (ms, caffe_ms)
    return results


if __name__ == "__main__":
    main()
