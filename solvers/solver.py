"""The training loop: Caffe's Solver (Init, Step, Solve, Test, Snapshot, Restore).

A :class:`Solver` builds the TRAIN net and the TEST nets from a
SolverParameter and runs Caffe's schedule:

- each iteration: clear param diffs; test first when ``iter % test_interval
  == 0`` (and ``iter > 0`` or ``test_initialization``); ``iter_size``
  forward/backward passes accumulate gradients; the loss is averaged over
  them and smoothed over ``average_loss`` iterations for display; the
  update (see :mod:`dltrain.solvers.updates`) is applied; ``iter`` is incremented;
  a snapshot is written every ``snapshot`` iterations;
- at the end: a snapshot (``snapshot_after_train``) unless one was just
  written, then a last display forward and test where the schedule asks.

Subclasses (:mod:`dltrain.solvers.sgd_solvers`) name the update rule (``rule``)
and give its scalars (``hyper_parameters``).  The log lines are Caffe's,
so tools/extra/parse_log.py reads them, and every display and test
result also goes to ``<snapshot_prefix>_log.jsonl``.

dltrain additions: a loss that turns NaN/inf stops the run with a
DLTrainError naming the first non-finite layer output or gradient (nothing
is snapshotted from the broken state); a stop request (Ctrl-C, see
:mod:`dltrain.solvers.signals`) snapshots before stopping; a live progress line
on a terminal.
"""
import math
import os
import tempfile

import numpy as np

from dlcore import Net, TEST, TRAIN, backend, parallel, resume
from dlcore.config import (field_line, load_message, load_net, load_solver, remove_stale_temporaries, to_prototxt,
                           write_binary)
from dlcore.errors import BlobError, ConfigError, DLTrainError
from dlcore.net import weight_files
from dlcore.rng import set_random_seed
# Caffe's UpgradeSolverAsNeeded (the legacy solver_type enum -> type) lives with the
# other format upgrades in dlcore/upgrade.py; re-exported here for the solvers' callers.
from dlcore.upgrade import upgrade_solver_param
from dltrain.proto import caffe_pb2

from . import diagnostics, updates
from .lr_policy import LearningRatePolicy
from .training_log import JsonLog, Progress, fmt, info, warning
from .updates import REG_L1, REG_L2, REG_NONE, GradientSteps

__all__ = ["Solver", "SolverAction", "device_for_solver", "gpu_or_cpu_notice", "snapshot_filename",
           "upgrade_solver_param", "output_loss_weights"]


class NonFiniteError(DLTrainError):
    """The loss, a gradient or an update turned NaN/inf: nothing is snapshotted from that state."""


class SolverAction:
    """What a stop/snapshot request asks for (Caffe's SolverAction::Enum)."""
    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"


def _update_kernels(gpu):
    """The update kernels of a device: :mod:`dltrain.solvers.updates` (host arrays) or, on the GPU,
    :mod:`dltrain.solvers.updates_cuda` (device arrays), which offer the same functions.  The one
    place the solver imports the GPU module (a CPU run never imports numba.cuda)."""
    if gpu:
        from . import updates_cuda
        return updates_cuda
    return updates


def output_loss_weights(net):
    """The loss weight of each of ``net``'s output blobs, in ``net.outputs`` order (Caffe's
    blob_loss_weights_; 0 for an output no loss layer weights)."""
    weights = net.blob_loss_weights
    return [weights[name] for name in net.outputs]


def device_for_solver(param, gpu_flag=None):
    """Where `dltrain train` runs a solver: (use_gpu, device_id, notice).

    ``gpu_flag`` (--gpu ID) demands the GPU: a DLTrainError naming what is
    missing if it cannot be used.  Otherwise ``solver_mode: GPU`` (Caffe's
    default) with ``device_id`` uses the GPU when one is usable and falls back
    to the CPU with a one-line notice when not; ``solver_mode: CPU`` is the CPU.
    """
    if gpu_flag is not None:
        text = str(gpu_flag).strip()
        if text == "all":
            device = 0
        else:
            ids = [s for s in text.split(",") if s.strip()]
            try:
                device = int(ids[0])
            except (IndexError, ValueError):
                raise DLTrainError(f"--gpu {gpu_flag}: give a GPU device id (a number, e.g. --gpu 0)") from None
            if len(ids) > 1:
                raise DLTrainError(f"--gpu {gpu_flag}: dltrain trains on one GPU; give one device id")
        backend.require_gpu(device, what=f"--gpu {gpu_flag}")
        return True, device, None
    if param.solver_mode == caffe_pb2.SolverParameter.GPU:
        device = int(param.device_id)
        ok, notice = gpu_or_cpu_notice(device, "solver_mode is GPU", "training")
        return (True, device, None) if ok else (False, None, notice)
    return False, None, None


def gpu_or_cpu_notice(device_id, asked, doing):
    """Whether GPU ``device_id`` can be used where ``asked`` wants it, and if not the one-line notice
    of the fall-back to the CPU: (True, None), or (False, "<asked> but no GPU can be used (<reason>);
    <doing> on the CPU").  `dltrain train`'s solver_mode: GPU and pycaffe's set_mode_gpu() share it."""
    ok, reason = backend.gpu_available(device_id)
    if ok:
        return True, None
    return False, f"{asked} but no GPU can be used ({reason}); {doing} on the CPU"


def snapshot_filename(prefix, iter, extension):
    """Caffe's Solver::SnapshotFilename: ``<prefix>_iter_<N><extension>``."""
    return f"{prefix}_iter_{int(iter)}{extension}"


def _default_snapshot_prefix(param, solver_path):
    """Caffe's UpgradeSnapshotPrefixProperty: no prefix -> the solver file's path
    without its extension; a prefix naming a folder -> that folder / the
    solver file's stem.  Relative prefixes are relative to the current
    directory (as in Caffe); when the prefix's folder is missing there but
    exists beside the solver file, the solver file's folder is used (as
    for net files)."""
    stem = os.path.splitext(os.path.basename(solver_path))[0] if solver_path else "solver"
    if not param.HasField("snapshot_prefix"):
        if not solver_path:
            return ""
        prefix = os.path.splitext(solver_path)[0]
        info(f"snapshot_prefix was not specified and is set to {prefix}")
        return prefix
    prefix = param.snapshot_prefix
    if prefix and not os.path.isabs(prefix) and solver_path:
        folder = os.path.dirname(prefix)
        beside = os.path.join(os.path.dirname(solver_path), prefix)
        if folder and not os.path.isdir(folder) and os.path.isdir(os.path.dirname(beside)):
            prefix = beside
    if os.path.isdir(prefix) or prefix.endswith(("/", os.sep)):
        prefix = os.path.join(prefix, stem)
        info(f"snapshot_prefix is a directory and is set to {prefix}")
    return prefix


class Solver:
    """Base of the solvers; ``SGDSolver`` and its relatives implement the update.

    ``Solver(path_or_SolverParameter, dtype=np.float32)``.  A path is
    loaded with its net paths resolved (current directory, then the solver
    file's folder) and names the file in errors.  pycaffe's face:
    ``net``, ``test_nets``, ``iter``, ``param``, ``lr``, ``step(n)``, ``solve(resume_file)``,
    ``snapshot()``, ``restore(state_file)``, ``apply_update()``, ``add_callback(on_start,
    on_gradients_ready)``, ``share_weights(net)``.
    """

    type = None
    rule = None           # the update rule's name in solvers.updates.RULES

    @property
    def history_sets(self):
        """History blobs per learnable parameter: the rule's (Adam, AdaDelta: 2)."""
        return updates.RULES[self.rule][2] if self.rule else 1

    def __init__(self, param, dtype=np.float32, solver_path=None, gpu=None):
        if isinstance(param, caffe_pb2.SolverParameter):
            copy = caffe_pb2.SolverParameter()
            copy.CopyFrom(param)
            param = copy
        else:
            solver_path = os.fspath(param)
            param = load_solver(solver_path, resolve_paths=True)
        self.source = solver_path
        upgrade_solver_param(param, solver_path)
        if self.type is not None and param.type != self.type:
            # pycaffe's SGDSolver(file) etc. use their own rule whatever the file says.
            if param.HasField("type"):
                warning(f"solver type '{param.type}' ignored: this is a {self.type} solver "
                        "(get_solver() picks the class from the type)")
            param.type = self.type
        self.param = param
        self.dtype = np.dtype(dtype)
        # The device, as pycaffe's: the backend's mode (dlcore.set_mode_gpu / caffe.set_mode_gpu) unless
        # given; `dltrain train` decides it from --gpu and solver_mode (see device_for_solver).  The train
        # net resolves it (Net's gpu argument); the test nets and the update kernels follow the train net.
        if gpu:
            backend.require_gpu(what="a GPU solver")      # before anything is built
        info("Initializing solver from parameters: \n" + to_prototxt(param).rstrip("\n"))
        self._check_param()
        self.lr_policy = LearningRatePolicy(param, self._where)
        self.snapshot_prefix = _default_snapshot_prefix(param, solver_path)
        if param.random_seed >= 0:
            set_random_seed(param.random_seed)
        # A data-parallel run (dlcore.parallel): every rank trains its own batches; rank 0 alone tests,
        # logs and writes files, and its weights (with --weights and --snapshot, too) are everyone's.
        self.world = parallel.world()
        root = self.world.is_root
        self.net = self._init_train_net(gpu)
        self.gpu = self.net.gpu
        self.test_nets = self._init_test_nets() if root else []
        if root:
            self._load_weights()
            self._check_snapshot_write_permissions()
        self._broadcast_weights()
        info("Solver scaffolding done.")
        self.iter = 0
        self.history = []
        self._pre_solve()
        self._kernels = _update_kernels(self.gpu)
        self._update_flags = self._kernels.new_flags(len(self.net.learnable_params))
        self.losses = []
        self.smoothed_loss = 0.0
        self._loss_start_iter = 0
        self._restored_losses = None     # (iter, losses, smoothed_loss, loss_start_iter) from a dltrain state
        self.requested_early_exit = False
        self.action_function = None       # callable -> SolverAction, polled at iteration boundaries
        self.progress_enabled = None      # None: on a terminal only
        self.log_path = (self.snapshot_prefix + "_log.jsonl") if self.snapshot_prefix and root else None
        if not root:
            self.progress_enabled = False
        self.bucket_bytes = 25 << 20      # the all-reduce buckets (DDP's default); 0: one blocking call
        self.check_ranks = False          # at each display: every rank's weights the same (a debug check)
        self._averager = None
        self._json = JsonLog(self.log_path)
        self._last_snapshot_iter = None
        self._last_rate = None
        self._progress = None
        self._loss_weights = [output_loss_weights(net) for net in [self.net] + self.test_nets]
        self._callbacks = []              # (on_start, on_gradients_ready) pairs: pycaffe's add_callback

    # --- setup -----------------------------------------------------------------
    def _where(self, field):
        if not self.source:
            return {}
        return {"path": self.source, "line": field_line(self.source, field)}

    def _fail(self, message, field):
        raise ConfigError(message, field=field, **self._where(field))

    @property
    def current_step(self):
        return self.lr_policy.current_step

    @current_step.setter
    def current_step(self, value):
        self.lr_policy.current_step = int(value)

    def _check_param(self):
        p = self.param
        if p.average_loss < 1:
            self._fail(f"average_loss must be at least 1 (got {p.average_loss})", "average_loss")
        if p.iter_size < 1:
            self._fail(f"iter_size must be at least 1 (got {p.iter_size})", "iter_size")
        for field in ("display", "max_iter", "snapshot", "test_interval"):
            if getattr(p, field) < 0:
                self._fail(f"{field} must not be negative (got {getattr(p, field)})", field)
        for i, n in enumerate(p.test_iter):
            if n < 0:
                self._fail(f"test_iter[{i}] must not be negative (got {n})", "test_iter")
        if p.regularization_type not in ("L1", "L2"):
            self._fail(f"unknown regularization_type '{p.regularization_type}' (use L1 or L2)",
                       "regularization_type")
        if p.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
            self._fail("snapshot_format HDF5 is not supported; use BINARYPROTO (the default)", "snapshot_format")
        if not math.isfinite(p.base_lr):
            self._fail(f"base_lr must be finite (got {p.base_lr})", "base_lr")
        self.check_solver_param()

    def check_solver_param(self):
        """Rule-specific checks (a subclass's constructor_sanity_check)."""

    def _check_snapshot_write_permissions(self):
        """Caffe's CheckSnapshotWritePermissions: fail now, not after hours of training."""
        if not self.snapshot_prefix or not (self.param.snapshot or self.param.snapshot_after_train):
            return
        folder = os.path.dirname(self.snapshot_prefix)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            # O_EXCL, never a plain open: a name planted in a shared folder (a symlink) is not followed.
            fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(self.snapshot_prefix)}.probe.",
                                         dir=folder or ".")
            os.close(fd)
            os.remove(probe)
            remove_stale_temporaries(self.snapshot_prefix)    # what a killed run of this prefix left behind
        except (OSError, ValueError) as err:      # ValueError: a NUL byte in the path
            reason = getattr(err, "strerror", None) or err
            raise ConfigError(f"cannot write to snapshot prefix '{self.snapshot_prefix}' ({reason}); "
                              "make sure its folder exists and is writable", field="snapshot_prefix",
                              **self._where("snapshot_prefix")) from None

    @staticmethod
    def _merged_state(phase, net_state, solver_state=None):
        """Caffe's NetState precedence: the phase default, then the net's own
        ``state``, then the solver's train_state / test_state."""
        state = caffe_pb2.NetState(phase=phase)
        state.MergeFrom(net_state)
        if solver_state is not None:
            state.MergeFrom(solver_state)
        return state

    def _build_net(self, source, solver_state, phase, gpu):
        """A Net from a file path or a NetParameter, in the merged state."""
        net_state = source.state if isinstance(source, caffe_pb2.NetParameter) else load_net(source).state
        state = self._merged_state(phase, net_state, solver_state)
        return Net(source, phase=state.phase, level=state.level, stages=list(state.stage), dtype=self.dtype, gpu=gpu)

    def _init_train_net(self, gpu):
        p = self.param
        fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not fields:
            self._fail("the solver names no train net: give one of net, net_param, train_net, train_net_param",
                       "net")
        if len(fields) > 1:
            self._fail(f"the solver names the train net more than once ({', '.join(fields)}); give only one",
                       fields[1])
        field = fields[0]
        if field == "train_net_param":
            info("Creating training net specified in train_net_param.")
            source = p.train_net_param
        elif field == "train_net":
            info(f"Creating training net from train_net file: {p.train_net}")
            source = p.train_net
        elif field == "net_param":
            info("Creating training net specified in net_param.")
            source = p.net_param
        else:
            info(f"Creating training net from net file: {p.net}")
            source = p.net
        return self._build_net(source, p.train_state, TRAIN, gpu)

    def _init_test_nets(self):
        p = self.param
        generic = int(p.HasField("net")) + int(p.HasField("net_param"))
        if generic > 1:
            self._fail("give net or net_param, not both", "net_param")
        specific = len(p.test_net_param) + len(p.test_net)
        if (generic and len(p.test_iter) < specific) or (not generic and len(p.test_iter) != specific):
            self._fail(f"test_iter must be given once per test net ({specific} test nets, "
                       f"{len(p.test_iter)} test_iter values)", "test_iter")
        instances = specific + (len(p.test_iter) - specific if generic else 0)
        if p.test_state and len(p.test_state) != instances:
            self._fail(f"test_state must be unspecified or given once per test net ({instances} test nets, "
                       f"{len(p.test_state)} test_state values)", "test_state")
        if instances and p.test_interval <= 0:
            self._fail(f"test_interval must be positive when there are test nets (got {p.test_interval})",
                       "test_interval")
        sources = []
        for param in p.test_net_param:
            sources.append(("test_net_param", param))
        for path in p.test_net:
            sources.append((f"test_net file: {path}", path))
        for _ in range(len(p.test_iter) - len(sources)):
            if p.HasField("net_param"):
                sources.append(("net_param", p.net_param))
            else:
                sources.append((f"net file: {p.net}", p.net))
        nets = []
        for i, (label, source) in enumerate(sources):
            info(f"Creating test net (#{i}) specified by {label}")
            state = p.test_state[i] if p.test_state else None
            nets.append(self._build_net(source, state, TEST, self.gpu))
        return nets

    def _load_weights(self):
        """Caffe's LoadNetWeights for each ``weights`` entry (comma-separated
        lists allowed): into the train net and every test net."""
        for entry in self.param.weights:
            for path in weight_files(entry):
                if not os.path.isfile(path) and self.source and not os.path.isabs(path):
                    beside = os.path.join(os.path.dirname(self.source), path)
                    if os.path.isfile(beside):
                        path = beside
                info(f"Finetuning from {path}")
                self.net.copy_from(path)
                for net in self.test_nets:
                    net.copy_from(path)

    def _pre_solve(self):
        """Allocate the history: ``history_sets`` zero blobs per learnable
        parameter, all of one set before the next (Caffe's layout)."""
        from dlcore.blob import Blob
        self.history = []
        for _ in range(self.history_sets):
            for blob in self.net.learnable_params:
                self.history.append(Blob(blob.shape, dtype=self.dtype))

    # --- running -----------------------------------------------------------------
    def set_action_function(self, function):
        """Poll ``function()`` -> SolverAction at every iteration boundary (Caffe's SetActionFunction)."""
        self.action_function = function

    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's add_callback: in each iteration of step(), call ``on_start()`` before the forward
        passes and ``on_gradients_ready()`` after the backward passes, before the update (Caffe's
        Solver::Step).  One object with both methods may be given instead (as train.py gives its NCCL)."""
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            on_start, on_gradients_ready = on_start.on_start, on_start.on_gradients_ready
        if not callable(on_start) or not callable(on_gradients_ready):
            raise TypeError("add_callback(on_start, on_gradients_ready): give two callables (each called with "
                            "no arguments), or one object with on_start() and on_gradients_ready() methods")
        self._callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net):
        """pycaffe's share_weights: ``net`` uses this solver's train-net parameters, by layer name."""
        net.share_trained_layers_with(self.net)

    @property
    def lr(self):
        """The learning rate the next update uses (the lr_policy at the current iteration)."""
        return self.lr_policy.peek(self.iter)

    def _requested_action(self):
        if self.action_function is None:
            return SolverAction.NONE
        return self.action_function() or SolverAction.NONE

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (from ``resume_file``, a .solverstate, if given)."""
        try:
            self._solve(resume_file)
        finally:
            self._json.close()

    def _solve(self, resume_file):
        info(f"Solving {self.net.name}")
        info(f"Learning Rate Policy: {self.param.lr_policy}")
        self.requested_early_exit = False
        if resume_file:
            info(f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
            if self.iter > self.param.max_iter:
                raise ConfigError(f"the solver state is at iteration {self.iter}, past max_iter "
                                  f"{self.param.max_iter}: raise max_iter to train further", path=resume_file)
        start_iter = self.iter
        self.step(self.param.max_iter - self.iter)
        if self.param.snapshot_after_train or self.requested_early_exit:
            if self._last_snapshot_iter != self.iter:
                self.snapshot()
        if self.requested_early_exit:
            info("Optimization stopped early.")
            return
        p = self.param
        if p.display and self.iter % p.display == 0:
            loss = self._forward(self.net, p.debug_info)
            self._update_smoothed_loss(loss, self._loss_start_iter, p.average_loss)
            info(f"Iteration {self.iter}, loss = {fmt(self._cast(self.smoothed_loss))}")
            self._json.write(self.iter, "train", loss=self._cast(self.smoothed_loss),
                             lr=self._cast(self.lr_policy.peek(self.iter)), outputs=self._outputs(self.net))
        if p.test_interval and self.iter % p.test_interval == 0 and self.world.is_root:
            self.test_all()
        averager = self._averager
        if averager is not None and self.iter > start_iter:
            iterations = self.iter - start_iter
            info(f"All-reduce: {averager.bytes_per_step} bytes of gradients per iteration in "
                 f"{len(averager.buckets)} bucket(s); {1e3 * averager.seconds_waiting / iterations:.3f} ms per "
                 "iteration waiting for them after backward")
        info("Optimization Done.")

    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step).

        A failure after the run has made progress (a data error, a full disk, a Python layer calling
        sys.exit) writes a snapshot of the last iteration boundary before it is raised, as Ctrl-C does; a
        SystemExit or KeyboardInterrupt raised inside a layer snapshots even without progress.  Non-finite
        values and a second Ctrl-C never snapshot.
        """
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        restored, self._restored_losses = self._restored_losses, None
        if restored is not None and restored[0] == self.iter:
            _, self.losses, self.smoothed_loss, self._loss_start_iter = restored
        else:
            self.losses, self.smoothed_loss, self._loss_start_iter = [], 0.0, start_iter
        net = self.net
        progress = Progress(start_iter, max(stop_iter, start_iter), enabled=self.progress_enabled)
        self._progress = progress
        boundary = resume.capture(self._nets())     # where a snapshot after a failure would continue
        if self.world.parallel:
            self._gradient_averager()
        # Non-finite values are detected and reported by the solver itself;
        # NumPy's floating-point warnings would only add noise to the log.
        try:
            with progress, np.errstate(all="ignore"):
                while self.iter < stop_iter:
                    net.clear_param_diffs()
                    if (p.test_interval and self.iter % p.test_interval == 0
                            and (self.iter > 0 or p.test_initialization) and self.world.is_root):
                        self.test_all()
                        if self.requested_early_exit:
                            break
                    display = bool(p.display) and self.iter % p.display == 0
                    debug = display and p.debug_info
                    for on_start, _ in self._callbacks:
                        on_start()
                    loss = 0.0
                    for k in range(p.iter_size):
                        if self._averager is not None and k == p.iter_size - 1:
                            net.after_layer_backward = self._averager.layer_done     # the last pass's gradients
                        loss += self._forward_backward(debug)
                    net.after_layer_backward = None
                    loss /= p.iter_size
                    if self.world.parallel:
                        loss, request = self._average_over_ranks(loss, self._requested_action())
                    if not math.isfinite(loss):
                        raise self._non_finite_error(f"loss is {loss}")
                    self._update_smoothed_loss(loss, self._loss_start_iter, p.average_loss)
                    # Before the rate: a callback may change param.base_lr for this very update, as in Caffe.
                    for _, on_gradients_ready in self._callbacks:
                        on_gradients_ready()
                    rate, message = self.lr_policy.rate(self.iter)
                    if display:
                        self._display(rate)
                    boundary = None                         # the weights change now
                    self._apply_update(rate, message, display, debug)
                    self.iter += 1
                    if self.check_ranks and display and self.world.parallel:
                        self._check_ranks_agree()
                    boundary = resume.capture(self._nets())
                    if not self.world.parallel:
                        request = self._requested_action()
                    if ((p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT):
                        self.snapshot(boundary)
                    if request == SolverAction.STOP:
                        self.requested_early_exit = True
                        break
                    progress.update(self.iter, self.smoothed_loss, rate)
        except BaseException as err:
            if boundary is not None and not self.world.parallel and \
                    self._snapshot_after(err, progressed=self.iter > start_iter):
                self._snapshot_after_failure(err, boundary)
            raise
        finally:
            self._progress = None

    def _nets(self):
        return [self.net] + self.test_nets

    # --- data-parallel runs ------------------------------------------------------------------
    def _broadcast_weights(self):
        """Rank 0's parameters (every blob of every layer: BatchNorm's statistics too) on every rank."""
        if self.world.parallel:
            for layer in self.net.layers:
                for blob in layer.blobs:
                    self.world.broadcast(blob.mutable_cpu_data())

    def _average_over_ranks(self, loss, request):
        """Caffe's multi-GPU step: the parameter gradients summed over the ranks, then divided by their number
        (in buckets started during backward, see dlcore.parallel.GradientAverager); the loss averaged (what rank
        0 displays); and a stop or snapshot request of any rank (Ctrl-C reaches every rank) agreed on by all,
        so that they stop or snapshot at the same iteration."""
        self._gradient_averager().finish()
        scalars = np.array([loss, request == SolverAction.STOP, request == SolverAction.SNAPSHOT], np.float64)
        self.world.allreduce_sum(scalars)
        loss = float(scalars[0]) / self.world.size
        stop, snapshot = scalars[1] > 0, scalars[2] > 0
        return loss, (SolverAction.STOP if stop else SolverAction.SNAPSHOT if snapshot else SolverAction.NONE)

    def _check_ranks_agree(self):
        """The debug check of --check_ranks: every rank's weights sum to the same, bit for bit."""
        total = math.fsum(float(np.sum(b.cpu_data(), dtype=np.float64)) for b in self.net.learnable_params)
        high, low = self.world.allreduce_max(total), -self.world.allreduce_max(-total)
        if high != low:
            raise DLTrainError(f"the ranks' weights differ after iteration {self.iter} (sums from {low!r} to "
                               f"{high!r}): the ranks no longer train one model")
        info(f"Iteration {self.iter}: the weights of all {self.world.size} ranks agree (sum {total!r})")

    def _gradient_averager(self):
        if self._averager is None:
            self._averager = parallel.GradientAverager(self.world, self.net, self.dtype, self.bucket_bytes)
        return self._averager

    @staticmethod
    def _snapshot_after(err, progressed):
        """Whether a failure ``err`` in step() leaves a state worth a snapshot."""
        if isinstance(err, NonFiniteError) or not isinstance(err, (Exception, KeyboardInterrupt, SystemExit)):
            return False
        original = getattr(err, "original", None)
        if isinstance(original, (SystemExit, KeyboardInterrupt)):
            return True                   # a layer ended the run: as Ctrl-C, snapshot
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            return False                  # a second Ctrl-C: out at once
        return progressed

    def _snapshot_after_failure(self, err, boundary):
        if self._last_snapshot_iter == self.iter or not self.snapshot_prefix:
            return
        info(f"Training failed at iteration {self.iter}; writing a snapshot of the last completed iteration "
             "before stopping")
        try:
            self.snapshot(boundary)
        except Exception as second:       # reported; the first failure is what the run ends with
            warning(f"the snapshot after the failure could not be written either: {second}")

    def _forward(self, net, debug):
        if debug:
            return diagnostics.forward_debug(net)
        loss = net.forward_from_to(0, len(net.layers) - 1)
        net.loss = loss
        return loss

    def _forward_backward(self, debug):
        if debug:
            loss = diagnostics.forward_debug(self.net)
            diagnostics.backward_debug(self.net)
            return loss
        return self.net.forward_backward()

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` losses."""
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self.losses[idx]) / average_loss
            self.losses[idx] = loss

    def _cast(self, value):
        return self.dtype.type(value)

    def _outputs(self, net):
        """{output name: value (or list of values)} of ``net``'s output blobs."""
        out = {}
        for name in net.outputs:
            data = net.blobs[name].cpu_data()
            out[name] = data.flat[0] if data.size == 1 else list(data.ravel())
        return out

    def _output_lines(self, net, weights, label, values=None):
        """Caffe's ``    Train net output #k: name = v (* w = w*v loss)`` lines."""
        index = 0
        for j, name in enumerate(net.outputs):
            data = values[j] if values is not None else net.blobs[name].cpu_data().ravel()
            weight = weights[j]
            for v in np.asarray(data).ravel():
                v = self._cast(v)
                suffix = f" (* {fmt(weight)} = {fmt(self._cast(weight) * v)} loss)" if weight else ""
                info(f"    {label} net output #{index}: {name} = {fmt(v)}{suffix}")
                index += 1

    def _display(self, rate):
        info(f"Iteration {self.iter}, loss = {fmt(self._cast(self.smoothed_loss))}")
        self._output_lines(self.net, self._loss_weights[0], "Train")
        self._json.write(self.iter, "train", loss=self._cast(self.smoothed_loss), lr=self._cast(rate),
                         outputs=self._outputs(self.net))

    # --- the update ----------------------------------------------------------------
    def apply_update(self):
        """Compute the rate for the current iteration and apply one update
        (pycaffe's ``solver.apply_update()``; ``iter`` is not incremented)."""
        rate, message = self.lr_policy.rate(self.iter)
        display = bool(self.param.display) and self.iter % self.param.display == 0
        self._apply_update(rate, message, display, False)

    def _apply_update(self, rate, message, display, debug):
        """Caffe's SGDSolver::ApplyUpdate: clip, then per parameter normalize,
        regularize and compute the update value, then Net::Update."""
        if message:
            info(message)
        if display:
            info(f"Iteration {self.iter}, lr = {fmt(self._cast(rate))}")
        self._last_rate = rate
        params = self.net.learnable_params
        kernels = self._kernels
        clip_scale = 1.0
        clip = self.param.clip_gradients
        if clip >= 0:
            l2norm = math.sqrt(kernels.sumsq_total([(self._diff(blob), blob.count) for blob in params]))
            if l2norm > clip:
                clip_scale = clip / l2norm
                info(f"Gradient clipping: scaling down gradients (L2 norm {fmt(self._cast(l2norm))} > "
                     f"{fmt(clip)}) by scale factor {fmt(self._cast(clip_scale))}")
        # Normally each kernel applies its update in the same pass; with
        # debug_info the [Update] lines come first (weights before the update).
        fused = not debug
        kernels.reset_flags(self._update_flags)
        for param_id in range(len(params)):
            self.compute_update_value(param_id, rate, clip_scale, apply=fused)
        bad = kernels.bad_params(self._update_flags, len(params))     # on the GPU one small copy back
        if bad:
            raise self._non_finite_error("the update is not finite", bad_params=bad)
        if not fused:
            diagnostics.update_debug(self.net)
            for blob in params:
                kernels.apply_update(self._data(blob), self._diff(blob), blob.count)

    def _data(self, blob):
        """``blob``'s data as the update kernels take it, to be written: a flat host array, or on the GPU a
        device array."""
        return blob.mutable_gpu_data() if self.gpu else blob.data.reshape(-1)

    def _diff(self, blob, write=False):
        """``blob``'s diff as the update kernels take it (to be written with ``write``)."""
        if self.gpu:
            return blob.mutable_gpu_diff() if write else blob.gpu_diff()
        return blob.diff.reshape(-1)

    def _gradient_steps(self, param_id, clip_scale):
        """Steps 1-3 of learnable param ``param_id``: clip, normalize, regularize
        (:class:`dltrain.solvers.updates.GradientSteps`, in the param's dtype)."""
        dt = self.dtype.type
        p = self.param
        local_decay = dt(dt(p.weight_decay) * dt(self.net.params_weight_decay[param_id]))
        reg = REG_NONE
        if local_decay:
            reg = REG_L2 if p.regularization_type == "L2" else REG_L1
        iter_size = p.iter_size
        norm = dt(dt(1) / dt(iter_size))
        return GradientSteps(dt(clip_scale), clip_scale != 1.0, norm, iter_size != 1, local_decay, reg)

    def hyper_parameters(self, param_id, rate):
        """The scalars of the update rule (its record in :mod:`dltrain.solvers.updates`, in the param's
        dtype) for learnable param ``param_id`` at learning rate ``rate``."""
        raise NotImplementedError

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        """Write the update of learnable param ``param_id`` into its diff (and
        with ``apply`` also subtract it from the weights) with the rule named
        ``self.rule``; a non-finite update value is not applied and flags the
        param (the flags are read once per iteration, see ``_apply_update``)."""
        blob = self.net.learnable_params[param_id]
        count = len(self.net.learnable_params)
        histories = [self._data(self.history[k * count + param_id]) for k in range(self.history_sets)]
        self._kernels.update(self.rule, self._data(blob), self._diff(blob, write=True), histories, blob.count,
                             self._update_flags, param_id, bool(apply), self._gradient_steps(param_id, clip_scale),
                             self.hyper_parameters(param_id, rate))

    # --- NaN / inf ---------------------------------------------------------------------
    def _non_finite_error(self, what, bad_params=()):
        where = None
        try:
            where = diagnostics.find_non_finite(self.net)
        except Exception as err:          # the diagnosis must not hide the real problem
            where = f"(could not re-run the iteration to find it: {err})"
        if where is None and bad_params:
            owners = self._param_owner_names()
            where = "the update of " + ", ".join(owners[i] for i in bad_params[:3]) + \
                    (" (the gradients were finite: lower base_lr or check the solver's settings)")
        message = f"{what} at iteration {self.iter}"
        if where:
            message += f"; first non-finite value: {where}"
        else:
            message += "; no layer output or gradient was non-finite when the iteration was re-run"
        if self._last_snapshot_iter is not None:
            message += (f"; the last snapshot ({snapshot_filename(self.snapshot_prefix, self._last_snapshot_iter, '.solverstate')})"
                        " is kept")
        return NonFiniteError(message)

    def _param_owner_names(self):
        """For each learnable param, 'parameter k of layer X'."""
        names = {}
        for name, layer in zip(self.net.layer_names, self.net.layers):
            for k, blob in enumerate(layer.blobs):
                for i, owned in enumerate(self.net.learnable_params):
                    if owned is blob and i not in names:
                        names[i] = f"parameter {k} of layer '{name}'"
        return [names.get(i, f"learnable parameter {i}") for i in range(len(self.net.learnable_params))]

    # --- testing -----------------------------------------------------------------------
    def test_all(self):
        for test_net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(test_net_id)

    def test(self, test_net_id=0):
        """Caffe's Solver::Test: ``test_iter`` forward passes, outputs averaged."""
        info(f"Iteration {self.iter}, Testing net (#{test_net_id})")
        with np.errstate(all="ignore"):
            self._test(test_net_id)

    def _test(self, test_net_id):
        net = self.test_nets[test_net_id]
        net.share_trained_layers_with(self.net)
        p = self.param
        iterations = p.test_iter[test_net_id]
        scores = None
        loss = 0.0
        for i in range(iterations):
            # (In a data-parallel run the ranks agree on requests at training iterations only.)
            request = SolverAction.NONE if self.world.parallel else self._requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            iter_loss = self._forward(net, p.debug_info)
            if p.test_compute_loss:
                loss += iter_loss
            result = [net.blobs[name].cpu_data().astype(np.float64).ravel() for name in net.outputs]
            if scores is None:
                scores = [r.copy() for r in result]
            else:
                for name, s, r in zip(net.outputs, scores, result):
                    if r.size != s.size:
                        raise DLTrainError(f"test net #{test_net_id}: output '{name}' has {r.size} values in test "
                                           f"iteration {i}, {s.size} before: test outputs must keep their size "
                                           "to be averaged")
                    s += r
        if self.requested_early_exit:
            info("Test interrupted.")
            return
        if p.test_compute_loss:
            loss /= iterations
            info(f"Test loss: {fmt(self._cast(loss))}")
        if scores is None:
            return
        means = [s / iterations for s in scores]
        weights = self._loss_weights[1 + test_net_id]
        self._output_lines(net, weights, "Test", means)
        outputs = {name: (self._cast(m[0]) if m.size == 1 else [self._cast(x) for x in m])
                   for name, m in zip(net.outputs, means)}
        if p.test_compute_loss:
            total = loss
        else:
            total = sum(w * float(m.sum()) for w, m in zip(weights, means) if w) if any(weights) else None
        self._json.write(self.iter, "test", loss=None if total is None else self._cast(total),
                         lr=self._cast(self.lr_policy.peek(self.iter)), outputs=outputs,
                         net=test_net_id)

    # --- snapshots -----------------------------------------------------------------------
    def snapshot_filename(self, extension):
        return snapshot_filename(self.snapshot_prefix, self.iter, extension)

    def snapshot(self, boundary=None):
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``, each atomically.

        ``boundary`` (a :class:`dlcore.resume.ResumePoint`) is where the data layers and random streams
        stood at the end of iteration N; by default it is taken now.

        Nothing is written from a state with non-finite weights.  If the
        solver state cannot be written, the model file of this snapshot is
        removed again (unless it existed before), so a snapshot is whole
        or absent.

        In a data-parallel run every rank calls it at the same iteration; rank 0 writes the files, with
        each rank's data position and random streams, and the others return (None, None).
        """
        point = boundary or resume.capture(self._nets())
        others = []
        if self.world.parallel:
            gathered = self.world.gather(point.to_proto(caffe_pb2.ResumeState()).SerializeToString())
            if not self.world.is_root:
                self._last_snapshot_iter = self.iter
                return None, None
            others = gathered[1:]
        for blob in self.net.learnable_params:
            if not np.isfinite(blob.cpu_data()).all():
                raise DLTrainError(f"not writing a snapshot at iteration {self.iter}: the weights are not finite")
        model_filename = self.snapshot_filename(".caffemodel")
        state_filename = self.snapshot_filename(".solverstate")
        folder = os.path.dirname(model_filename)
        if folder:
            os.makedirs(folder, exist_ok=True)
        info(f"Snapshotting to binary proto file {model_filename}")
        net_param = self.net.to_proto(write_diff=self.param.snapshot_diff)
        state = self.solver_state(model_filename, point)
        for data in others:
            state.rank_resume.add().ParseFromString(data)
        existed = os.path.exists(model_filename)
        self._write(model_filename, net_param)
        info(f"Snapshotting solver state to binary proto file {state_filename}")
        try:
            self._write(state_filename, state)
        except BaseException:
            if not existed:
                try:
                    os.remove(model_filename)
                except OSError:
                    pass
            raise
        self._last_snapshot_iter = self.iter
        return model_filename, state_filename

    @staticmethod
    def _write(path, message):
        try:
            write_binary(path, message)
        except OSError as err:
            raise DLTrainError(f"cannot write snapshot '{path}': {err.strerror or err}") from None

    def solver_state(self, model_filename="", boundary=None):
        """The SolverState message of the current state, with dltrain's resume state (``boundary``, or the
        data layers' and random streams' state now)."""
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model_filename, current_step=self.current_step)
        for blob in self.history:
            blob.to_proto(state.history.add())
        (boundary or resume.capture(self._nets())).to_proto(state.resume)
        state.resume.recent_loss.extend(float(v) for v in self.losses)
        state.resume.smoothed_loss = float(self.smoothed_loss)
        state.resume.loss_start_iter = int(self._loss_start_iter)
        return state

    def restore(self, state_file):
        """Caffe's Restore: iteration, schedule position, history, and the
        weights of the ``learned_net`` the state names (and dltrain's data positions and random streams).

        In a data-parallel run rank 0 reads the files and shares what they hold; each rank gets its own data
        position when the state was written by a run of as many ranks."""
        state_file = os.fspath(state_file)
        if not self.world.parallel:
            self._restore_file(state_file)
            return
        own = None
        if self.world.is_root:
            state = self._restore_file(state_file)
            own = [None] * self.world.size
            if state.HasField("resume") and 1 + len(state.rank_resume) == self.world.size:
                own[1:] = [m.SerializeToString() for m in state.rank_resume]
        own = self.world.scatter(own)
        shared = self.world.share((self.iter, self.current_step, self._restored_losses) if self.world.is_root
                                  else None)
        self.iter, self.current_step, self._restored_losses = shared
        self._last_snapshot_iter = None
        self._broadcast_weights()
        for blob in self.history:
            self.world.broadcast(blob.mutable_cpu_data())
        if own is not None:
            resume.restore(caffe_pb2.ResumeState.FromString(own), self._nets(), state_file)

    def _restore_file(self, state_file):
        """Restore from ``state_file``; returns the SolverState read."""
        if state_file.endswith(".h5"):
            raise ConfigError("HDF5 solver states are not supported; use a .solverstate", path=state_file)
        state = load_message(state_file, caffe_pb2.SolverState)
        if state.iter < 0:
            raise ConfigError(f"the solver state's iter is {state.iter}: it must not be negative", path=state_file)
        if state.current_step < 0:
            raise ConfigError(f"the solver state's current_step is {state.current_step}: it must not be negative",
                              path=state_file)
        if len(state.history) != len(self.history):
            raise ConfigError(f"the solver state has {len(state.history)} history blobs; this {self.param.type} "
                              f"solver on this net needs {len(self.history)} (a state from another solver type "
                              "or net?)", path=state_file)
        for i, (blob, stored) in enumerate(zip(self.history, state.history)):
            if not blob.shape_equals(stored):
                from dlcore.blob import proto_shape, shape_string
                raise ConfigError(f"history blob {i} has shape {shape_string(proto_shape(stored))}; the net's "
                                  f"parameter has {blob.shape_string()}", path=state_file)
        if state.learned_net:
            model = state.learned_net
            if not os.path.isfile(model):
                beside = os.path.join(os.path.dirname(state_file), os.path.basename(model))
                if os.path.isfile(beside):
                    model = beside
            try:
                self.net.copy_from(model)
            except ConfigError as err:
                raise ConfigError(f"its learned_net: {err}", path=state_file) from None
        for i, (blob, stored) in enumerate(zip(self.history, state.history)):
            try:
                blob.from_proto(stored, reshape=False)
            except BlobError as err:
                raise ConfigError(f"history blob {i}: {err.message}", path=state_file) from None
        if state.HasField("resume"):
            ranks = 1 + len(state.rank_resume)
            if ranks != self.world.size:
                info(f"The solver state was written by a run of {ranks} rank(s), this run has {self.world.size}: "
                     "rank 0 continues where it was; the other ranks start their data again from their first "
                     "record (an exact resume needs the same number of ranks)")
            resume.restore(state.resume, self._nets(), state_file)
            r = state.resume
            self._restored_losses = (state.iter, list(r.recent_loss), r.smoothed_loss, r.loss_start_iter)
        else:
            info("The solver state holds no data position (written by Caffe or an older dltrain): the data "
                 "layers start again from their first record and the random streams from the seed, as in Caffe")
            self._restored_losses = None
        self.iter = state.iter
        self.current_step = state.current_step
        self._last_snapshot_iter = None
        return state

    def __repr__(self):
        return f"<{type(self).__name__} iter {self.iter} of {self.param.max_iter}, net '{self.net.name}'>"
