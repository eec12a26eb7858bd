"""`dltrain train` and `dltrain test`: Caffe's `caffe train` and `caffe test`.

    dltrain train --solver S [--weights W1,W2 | --snapshot S.solverstate] [--iterations N]
                  [--level N] [--stage a,b] [--sigint_effect stop|snapshot|none]
    dltrain test --model M --weights W [--iterations 50]

`dltrain solver.prototxt` is `dltrain train --solver solver.prototxt`.
"""
import os

from dlcore import TEST, DLTrainError

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


def _stages(text):
    return [s for s in text.split(",") if s]


def _gpu_id(flag):
    """The device id of --gpu (one id; 'all' means 0), checked: a clear error if that GPU cannot be used."""
    from dltrain.solvers import device_for_solver
    from dltrain.proto import caffe_pb2
    return device_for_solver(caffe_pb2.SolverParameter(), flag)[1]


def _bucket_mb(text):
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"must be a number of MB, 0 or more, got '{text}'")
    return value


def _rank_gpu(flag):
    """--gpu under MPI: each rank takes one device.  ``all`` gives the k-th rank of a node device k, a list
    gives it the list's k-th id; a single id is that device for every rank."""
    from dlcore import parallel
    world = parallel.world()
    if flag is None or not world.parallel:
        return flag
    text = str(flag).strip()
    if text == "all":
        return str(world.local_rank)
    ids = [s.strip() for s in text.split(",") if s.strip()]
    if len(ids) > 1:
        if len(ids) < world.local_size:
            raise DLTrainError(f"--gpu {flag}: {world.local_size} ranks run on this node; give as many device ids")
        return ids[world.local_rank]
    return text


def _join_ranks():
    """Under an MPI launcher with several ranks: train data-parallel (dlcore.parallel).  Ranks other than 0
    keep quiet, and each rank takes its share of the node's cores for Numba and BLAS (DLTRAIN_THREADS_PER_RANK
    overrides it), so that the ranks do not fight over them."""
    from dlcore import log, parallel
    world = parallel.world()
    if not world.parallel:
        return
    log.quiet = not world.is_root
    threads = os.environ.get("DLTRAIN_THREADS_PER_RANK")
    threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // world.local_size)
    import numba
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(threads)
    log.info(f"Data-parallel training on {world.size} ranks ({world.local_size} on this node, {threads} "
             "thread(s) each); rank 0 logs and writes the snapshots")


def cmd_train(args):
    """Train a net from a solver file (Caffe's `caffe train`)."""
    from dlcore import backend
    from dlcore.config import load_solver
    from dltrain.solvers import device_for_solver, get_solver
    from dltrain.solvers.signals import SignalHandler
    from dltrain.solvers.solver import upgrade_solver_param
    from dltrain.solvers.training_log import info

    if args.snapshot and args.weights:
        raise DLTrainError("give --snapshot to resume training or --weights to fine-tune, not both")
    _join_ranks()
    if args.iterations is not None and args.iterations < 0:
        raise DLTrainError(f"--iterations must not be negative (got {args.iterations})")
    param = load_solver(args.solver, resolve_paths=True)
    upgrade_solver_param(param, args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(args.stage)
    if args.iterations is not None:
        param.max_iter = args.iterations
    use_gpu, device, notice = device_for_solver(param, _rank_gpu(args.gpu))
    if use_gpu:
        backend.set_mode_gpu(device)
        info(f"Use GPU with device ID {device} ({backend.device_name(device)})")
    else:
        backend.set_mode_cpu()
        info(notice or "Use CPU.")
    if args.snapshot:
        param.ClearField("weights")
    elif args.weights:
        param.ClearField("weights")
        param.weights.append(args.weights)
    solver = get_solver(param, solver_path=args.solver)
    solver.bucket_bytes = int(args.bucket_mb * 2 ** 20)
    solver.check_ranks = args.check_ranks
    # Under mpirun, Ctrl-C reaches the ranks as SIGTERM: it gets Ctrl-C's effect (snapshot, then stop).
    from dlcore import parallel
    sigterm = args.sigint_effect if parallel.world().parallel else None
    with SignalHandler(args.sigint_effect, args.sighup_effect, sigterm) as handler:
        solver.set_action_function(handler.requested_action)
        if args.snapshot:
            info(f"Resuming from {args.snapshot}")
            solver.solve(args.snapshot)
        else:
            solver.solve()
    return 0


def cmd_test(args):
    """Score a trained model (Caffe's `caffe test`): per-batch outputs and their means."""
    from dlcore import Net, backend
    from dlcore.net import weight_files
    from dltrain.solvers import output_loss_weights
    from dltrain.solvers.training_log import fmt, info

    if args.iterations < 1:
        raise DLTrainError(f"--iterations must be at least 1 (got {args.iterations})")
    if args.gpu is not None:
        device = _gpu_id(args.gpu)
        backend.set_mode_gpu(device)
        info(f"Use GPU with device ID {device} ({backend.device_name(device)})")
    else:
        backend.set_mode_cpu()
        info("Use CPU.")
    net = Net(args.model, TEST, level=args.level, stages=args.stage)
    for path in weight_files(args.weights):
        net.copy_from(path)
    info(f"Running for {args.iterations} iterations.")
    loss_weight = dict(zip(net.outputs, output_loss_weights(net)))
    dtype = net.dtype.type
    scores, score_names = [], []
    loss = 0.0
    n = len(net.layers)
    for i in range(args.iterations):
        loss += net.forward_from_to(0, n - 1)
        count = sum(net.blobs[name].count for name in net.outputs)
        if i and count != len(scores):
            raise DLTrainError(f"the net's outputs hold {count} values in batch {i}, {len(scores)} before: test "
                               "outputs must keep their size to be averaged")
        idx = 0
        for name in net.outputs:
            for value in net.blobs[name].cpu_data().ravel():
                value = dtype(value)
                if i == 0:
                    scores.append(float(value))
                    score_names.append(name)
                else:
                    scores[idx] += float(value)
                info(f"Batch {i}, {name} = {fmt(value)}")
                idx += 1
    loss /= args.iterations
    info(f"Loss: {fmt(dtype(loss))}")
    for score, name in zip(scores, score_names):
        mean = dtype(score / args.iterations)
        weight = loss_weight.get(name, 0.0)
        suffix = f" (* {fmt(weight)} = {fmt(dtype(weight) * mean)} loss)" if weight else ""
        info(f"{name} = {fmt(mean)}{suffix}")
    return 0


def register(sub):
    p = sub.add_parser("train", help="train a net from a solver file (as `caffe train`)",
                       description="Train a net: `dltrain train --solver solver.prototxt` "
                                   "(or just `dltrain solver.prototxt`).")
    p.add_argument("--solver", required=True, help="the solver definition (.prototxt or .yaml)")
    p.add_argument("--weights", help="comma-separated .caffemodel files to fine-tune from "
                                     "(copied into the train and test nets by layer name)")
    p.add_argument("--snapshot", help="a .solverstate to resume training from")
    p.add_argument("--iterations", type=int, help="train to this many iterations (overrides max_iter)")
    p.add_argument("--gpu", help="train on this GPU (a device id; overrides solver_mode and device_id); "
                                 "an error if it cannot be used")
    p.add_argument("--level", type=int, default=0, help="the train net state's level (default 0)")
    p.add_argument("--stage", type=_stages, default=[], help="comma-separated train net state stages")
    p.add_argument("--sigint_effect", choices=SIGNAL_EFFECTS, default="stop",
                   help="what Ctrl-C does: stop (default: snapshot, then stop), snapshot (and go on), none")
    p.add_argument("--bucket_mb", type=_bucket_mb, default=25.0,
                   help="under MPI: all-reduce the gradients in buckets of this many MB while backward runs "
                        "(default 25); 0: in one blocking call after backward")
    p.add_argument("--check_ranks", action="store_true",
                   help="under MPI: at every display, check that every rank holds the same weights")
    p.add_argument("--sighup_effect", choices=SIGNAL_EFFECTS, default="snapshot",
                   help="what SIGHUP does: snapshot (default), stop, none")
    p.set_defaults(func=cmd_train)

    t = sub.add_parser("test", help="score a trained model (as `caffe test`)")
    t.add_argument("--model", required=True, help="the net definition (.prototxt or .yaml)")
    t.add_argument("--weights", required=True, help="the trained .caffemodel (comma-separated list allowed)")
    t.add_argument("--iterations", type=int, default=50, help="batches to score (default 50)")
    t.add_argument("--gpu", help="run on this GPU (a device id); an error if it cannot be used")
    t.add_argument("--level", type=int, default=0, help="the net state's level")
    t.add_argument("--stage", type=_stages, default=[], help="comma-separated net state stages")
    t.set_defaults(func=cmd_test)
