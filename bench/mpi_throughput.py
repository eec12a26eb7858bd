"""Training throughput (images/s) of one process against N MPI ranks, on the same net and per-rank batch.

    python bench/mpi_throughput.py [--ranks 2] [--iterations 600] [--rounds 2] [--net digits|caffenet]
                                   [--mca "btl self,tcp"]

Runs ``dltrain train`` on the digits LeNet (batch 64 per rank, its LMDB) or on CaffeNet (batch 10 per rank,
DummyData input, no test net), as one process and as ``mpirun -n N``, alternating rounds so machine noise hits
both alike.  Images/s come from the run's own JSONL log: the images trained between the first and the last
display after a warm-up (compilation and start-up are never timed), over the wall time between them.
``--mca "btl self,tcp"`` forces Open MPI's TCP transport, to stand in for a network.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def digits_net(folder):
    text = open(os.path.join(ROOT, "configs/digits/lenet_digits_train_test.prototxt")).read()
    text = text.replace('source: "configs/', f'source: "{ROOT}/configs/')
    path = os.path.join(folder, "net.prototxt")
    with open(path, "w") as f:
        f.write(text)
    return path, 64


def caffenet_net(folder):
    """The zoo's CaffeNet with DummyData input (batch 10) and a softmax loss: compute and communication only."""
    text = open(os.path.join(ROOT, "configs/zoo/caffenet_deploy.prototxt")).read()
    text = re.sub(r'layer \{\s*name: "data"\s*type: "Input".*?\n\}\n', "", text, count=1, flags=re.S)
    text = re.sub(r'layer \{\s*name: "prob"\s*type: "Softmax".*?\n\}\n?', "", text, count=1, flags=re.S)
    dummy = ('layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param { '
             'shape { dim: 10 dim: 3 dim: 227 dim: 227 } shape { dim: 10 } '
             'data_filler { type: "gaussian" std: 50 } data_filler { type: "constant" value: 1 } } }\n')
    loss = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }\n'
    path = os.path.join(folder, "net.prototxt")
    with open(path, "w") as f:
        f.write(dummy + text + loss)
    return path, 10


WAIT = re.compile(r"All-reduce: (\d+) bytes of gradients per iteration in (\d+) bucket\(s\); ([\d.]+) ms")


def run(folder, net, ranks, iterations, display, mca, bucket_mb=25.0):
    """Images per second per rank-batch (and, for several ranks, the all-reduce figures rank 0 logs)."""
    solver = os.path.join(folder, "solver.prototxt")
    prefix = os.path.join(folder, f"run{ranks}")
    with open(solver, "w") as f:
        f.write(f'net: "{net}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: {iterations} '
                f'display: {display} snapshot_after_train: false solver_mode: CPU snapshot_prefix: "{prefix}"')
    log = prefix + "_log.jsonl"
    if os.path.exists(log):
        os.remove(log)
    command = [os.path.join(BIN, "dltrain"), "train", "--solver", solver, "--bucket_mb", str(bucket_mb)]
    if ranks > 1:
        extra = []
        for item in mca or []:
            key, value = item.split()
            extra += ["--mca", key, value]
        command = [shutil.which("mpirun", path=BIN) or "mpirun", "-n", str(ranks), *extra, *command]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    with open(log) as f:
        records = [r for r in map(json.loads, f) if r["phase"] == "train"]
    first, last = records[1], records[-1]           # records[0] includes compilation
    found = WAIT.search(result.stderr)
    figures = (int(found.group(1)), int(found.group(2)), float(found.group(3))) if found else None
    return (last["iter"] - first["iter"]) / (last["time"] - first["time"]), figures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--display", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--net", choices=["digits", "caffenet"], default="digits")
    p.add_argument("--mca", action="append", help='an Open MPI setting, e.g. "btl self,tcp"')
    p.add_argument("--bucket_mb", type=float, default=1.0, help="bucket size of the overlapped runs (default 1)")
    args = p.parse_args()
    folder = tempfile.mkdtemp(prefix="dltrain-mpi-bench-")
    net, batch = (digits_net if args.net == "digits" else caffenet_net)(folder)
    single, blocking, overlapped = [], [], []
    for _ in range(args.rounds):
        single.append(run(folder, net, 1, args.iterations, args.display, args.mca)[0] * batch)
        rate, block_figures = run(folder, net, args.ranks, args.iterations, args.display, args.mca, 0)
        blocking.append(rate * batch * args.ranks)
        rate, overlap_figures = run(folder, net, args.ranks, args.iterations, args.display, args.mca, args.bucket_mb)
        overlapped.append(rate * batch * args.ranks)
    s, b, o = statistics.median(single), statistics.median(blocking), statistics.median(overlapped)
    print(f"{args.net}, batch {batch} per rank, {os.cpu_count()} cores, {args.rounds} rounds (median)"
          f"{', MCA ' + '; '.join(args.mca) if args.mca else ''}:")
    print(f"  1 process                          : {s:8.1f} images/s")
    print(f"  {args.ranks} ranks, one blocking all-reduce    : {b:8.1f} images/s   ({b / s:.2f}x)"
          f"   last run: {block_figures[0]:,} bytes/iteration, {block_figures[2]:.3f} ms/iteration waiting")
    print(f"  {args.ranks} ranks, {args.bucket_mb:g} MB buckets overlapped : {o:8.1f} images/s   ({o / s:.2f}x)"
          f"   last run: {overlap_figures[1]} buckets, {overlap_figures[2]:.3f} ms/iteration waiting")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
