"""`dltrain time`: average forward/backward time per layer, as `caffe time`."""
import argparse
import time

import numpy as np

from dlcore import TEST, TRAIN, log


def _phase(name):
    name = name.upper()
    if name not in ("TRAIN", "TEST"):
        raise argparse.ArgumentTypeError("phase must be TRAIN or TEST")
    return TRAIN if name == "TRAIN" else TEST


def _stages(text):
    return [s for s in text.split(",") if s]


def time_layers(net, iterations, sync=lambda: None, after_iteration=None):
    """Each layer's forward and backward seconds, summed over ``iterations`` passes that run the
    layers one by one (``sync()`` after each), in the net's BLAS thread setting
    (Net.cpu_blas_context) as in training; ``after_iteration(it, forward_seconds,
    backward_seconds)`` after each pass."""
    n = len(net.layers)
    fwd, bwd = np.zeros(n), np.zeros(n)
    clock = time.perf_counter
    with net.cpu_blas_context():
        for it in range(1, iterations + 1):
            t_iter = clock()
            for i, layer in enumerate(net.layers):
                t = clock()
                layer.run_reshape(net._bottom_vecs[i], net._top_vecs[i])
                layer.forward(net._bottom_vecs[i], net._top_vecs[i])
                sync()
                fwd[i] += clock() - t
            t_fwd_done = clock()
            for i in range(n - 1, -1, -1):
                if net.layer_need_backward[i]:
                    t = clock()
                    net.layers[i].backward(net._top_vecs[i], net.bottom_need_backward[i], net._bottom_vecs[i])
                    sync()
                    bwd[i] += clock() - t
            if after_iteration is not None:
                after_iteration(it, t_fwd_done - t_iter, clock() - t_fwd_done)
    return fwd, bwd


def cmd_time(args):
    """Average forward/backward time per layer and in total, as `caffe time`."""
    from dlcore import DLTrainError, Net, backend
    if args.iterations < 1:       # the report is an average per iteration
        raise DLTrainError(f"--iterations must be at least 1 (got {args.iterations})")
    sync = lambda: None       # noqa: E731
    if args.gpu is not None:
        from dltrain.cli.train import _gpu_id
        device = _gpu_id(args.gpu)
        backend.set_mode_gpu(device)
        log.info(f"Use GPU with device ID {device} ({backend.device_name(device)})")
        from dlcore.device import synchronize as sync     # time the kernels, not their launches
    else:
        backend.set_mode_cpu()
    net = Net(args.model, args.phase, level=args.level, stages=args.stage)
    names = net.layer_names
    n = len(net.layers)
    log.info("Performing Forward")
    # The first pass also compiles every kernel: it is never timed.
    loss = net.forward_from_to(0, n - 1)
    log.info(f"Initial loss: {loss:g}")
    log.info("Performing Backward")
    net.backward_from_to(n - 1, 0)
    sync()
    log.info("*** Benchmark begins ***")
    log.info(f"Testing for {args.iterations} iterations.")
    totals = [0.0, 0.0]

    def report(it, forward_seconds, backward_seconds):
        totals[0] += forward_seconds
        totals[1] += backward_seconds
        log.info(f"Iteration: {it} forward-backward time: {(forward_seconds + backward_seconds) * 1e3:.3f} ms.")
    start_all = time.perf_counter()
    fwd, bwd = time_layers(net, args.iterations, sync, report)
    total = time.perf_counter() - start_all
    total_fwd, total_bwd = totals
    k = 1e3 / args.iterations
    log.info("Average time per layer: ")
    for i, name in enumerate(names):
        log.info(f"{name:>10}\tforward: {fwd[i] * k:.5g} ms.")
        log.info(f"{name:>10}\tbackward: {bwd[i] * k:.5g} ms.")
    log.info(f"Average Forward pass: {total_fwd * k:.5g} ms.")
    log.info(f"Average Backward pass: {total_bwd * k:.5g} ms.")
    log.info(f"Average Forward-Backward: {(total_fwd + total_bwd) * k:.5g} ms.")
    log.info(f"Total Time: {total * 1e3:.5g} ms.")
    log.info("*** Benchmark ends ***")
    return 0


def register(sub):
    p = sub.add_parser("time", help="benchmark a net's forward and backward, per layer (as `caffe time`)")
    p.add_argument("--model", required=True, help="the net definition (.prototxt or .yaml)")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    p.add_argument("--phase", type=_phase, default=TRAIN, help="TRAIN (default) or TEST")
    p.add_argument("--level", type=int, default=0, help="the net state's level")
    p.add_argument("--stage", type=_stages, default=[], help="comma-separated net state stages")
    p.add_argument("--gpu", help="run on this GPU (a device id); an error if it cannot be used")
    p.set_defaults(func=cmd_time)
