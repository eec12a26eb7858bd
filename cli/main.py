"""`dltrain`: Caffe's `caffe` tool, in Python.

Thin by design: parse arguments, call dlcore/solvers, print.  Each
subcommand lives in its own module with a ``register(subparsers)``.
Caffe's single-dash long flags (``-model``) are accepted as well as
``--model``, and ``dltrain solver.prototxt`` means ``dltrain train --solver
solver.prototxt``.
"""
import argparse
import os
import signal
import sys
import threading

from dlcore import DLTrainError
from dlcore.plugins import PluginError, env_allows

from . import convert, draw, export, gradcheck, plot, plugins_cmd, predict, time_cmd, tools, train, upgrade

# The modules that add subcommands, in the order `dltrain --help` lists them.
COMMAND_MODULES = (train, time_cmd, convert, predict, export, gradcheck, plugins_cmd, upgrade, plot, draw, tools)

# Global options that take a value (skipped when looking for the bare solver-file form).
VALUE_OPTIONS = ("--plugin", "--config")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dltrain",
        description="Train and run Caffe nets (prototxt/YAML/caffemodel) with Numba kernels.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a plugin module (or .py file) that registers layer types; repeatable")
    parser.add_argument("--config", metavar="FILE",
                        help="the project config (plugins, log_dir); default: ./dltrain.yaml if present, "
                             "whose plugins load only when it is named here or with "
                             "DLTRAIN_ALLOW_PROJECT_PLUGINS=1")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for choice in sub.choices.values():
        choice.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show full tracebacks on errors")
        choice.add_argument("--plugin", action="append", dest="sub_plugin", default=argparse.SUPPRESS,
                            metavar="MODULE", help="load a plugin module (or .py file); repeatable")
        choice.add_argument("--config", dest="sub_config", default=argparse.SUPPRESS, metavar="FILE",
                            help="the project config (default: ./dltrain.yaml if present)")
    return parser


def _normalize_argv(argv):
    """Caffe's single-dash long flags (-model X -> --model X), and the bare
    `dltrain solver.prototxt` form."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and arg[1].isalpha():
            arg = "-" + arg
        out.append(arg)
    i, first = 0, None
    while i < len(out):
        if out[i] in VALUE_OPTIONS:
            i += 2
            continue
        if not out[i].startswith("-"):
            first = out[i]
            break
        i += 1
    if first is not None and first not in _command_names() and (
            os.path.exists(first) or first.endswith((".prototxt", ".yaml", ".yml"))):
        out[i:i + 1] = ["train", "--solver", first]
    return out


def _command_names():
    names = set()
    for action in build_parser()._subparsers._group_actions:
        names.update(action.choices)
    return names


def main(argv=None):
    argv = _normalize_argv(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    log_file = None
    previous_sigint = _interrupt_on_sigint()
    try:
        _refuse_numba_config_file()
        log_file = _load_project(args)
        return args.func(args) or 0
    except DLTrainError as err:
        if args.debug:
            raise
        hint = " (run with --debug to see the plugin's own traceback)" if isinstance(err, PluginError) else ""
        print(f"dltrain: error: {_rank()}{one_line(err)}{hint}", file=sys.stderr)
        _end_other_ranks()
        return 1
    except KeyboardInterrupt:
        print("dltrain: interrupted", file=sys.stderr)
        return 130
    except Exception as err:          # a bug, not bad input: still one line, and the way to see more
        if args.debug:
            raise
        print(f"dltrain: internal error: {_rank()}{type(err).__name__}: {one_line(err)} (run with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        _end_other_ranks()
        return 1
    finally:
        if log_file is not None:
            log_file.close()
        if previous_sigint is not _OFF_MAIN_THREAD:
            if argv is None:
                _exit_130_on_a_late_ctrl_c()
            else:                           # called from Python: the caller's handler comes back
                signal.signal(signal.SIGINT, signal.default_int_handler if previous_sigint is None
                              else previous_sigint)


_OFF_MAIN_THREAD = object()


def _parallel_world():
    """The data-parallel world if this run joined one (never imports mpi4py itself)."""
    from dlcore import parallel
    world = parallel._world
    return world if world is not None and world.parallel else None


def _rank():
    world = _parallel_world()
    return f"rank {world.rank}: " if world else ""


def _end_other_ranks():
    """One rank's error ends the whole data-parallel job at once (the others would wait for it for ever)."""
    world = _parallel_world()
    if world:
        sys.stderr.flush()
        world.abort(1)


def one_line(err):
    """``str(err)`` on one line: control characters (a newline inside a quoted name, say) as escapes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(err))


def _interrupt_on_sigint():
    """Ctrl-C raises dlcore's Interrupted (a KeyboardInterrupt that layer wrappers let through, so it is not
    taken for a Python layer's failure); the previous handler (off the main thread nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return _OFF_MAIN_THREAD
    return signal.signal(signal.SIGINT, _raise_interrupted)


def _raise_interrupted(signum, frame):
    from dlcore.errors import Interrupted
    raise Interrupted


def _exit_interrupted(signum=None, frame=None):
    try:
        sys.stderr.write("dltrain: interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _exit_130_on_a_late_ctrl_c():
    """The command is done and the program (argv None) shuts down: a Ctrl-C from here on ends it at once
    with exit code 130 and one line, never a traceback from a finalizer.  (In the last moments of shutdown
    Python has restored the default handler: the process then dies of SIGINT, which the shell also reports
    as 130.)"""
    signal.signal(signal.SIGINT, _exit_interrupted)


NUMBA_CONFIG_FILE = ".numba_config.yaml"
ALLOW_NUMBA_CONFIG_ENV = "DLTRAIN_ALLOW_NUMBA_CONFIG"


def _refuse_numba_config_file():
    """Numba reads ./.numba_config.yaml by itself, and that file can point
    Numba's cache (pickles, loaded as code) or its CUDA driver at files of
    the folder: a downloaded folder would run its code.  Refuse, unless the
    user says so; Numba is not imported yet, so nothing was read."""
    if not os.path.lexists(NUMBA_CONFIG_FILE):
        return
    if env_allows(ALLOW_NUMBA_CONFIG_ENV):
        return
    raise DLTrainError(f"{NUMBA_CONFIG_FILE} in the current folder would be read by Numba, and it can make "
                       f"Numba load code from any file; set the NUMBA_* environment variables you need "
                       f"instead, move the file, or set {ALLOW_NUMBA_CONFIG_ENV}=1 to use it")


def _load_project(args):
    """The project config and the plugins (entry points, config, --plugin),
    before the command runs; returns the log-file tee if log_dir is set."""
    from dlcore.plugins import load_plugins, load_project_config
    config_path = getattr(args, "sub_config", None) or args.config
    plugins = list(args.plugin) + list(getattr(args, "sub_plugin", None) or [])
    config = load_project_config(config_path)
    log_file = _LogTee.start(config.log_dir, args.command) if config.log_dir else None
    load_plugins(plugins, config)
    return log_file


class _LogTee:
    """Copies stderr (the glog-format log) into a file in ``log_dir``, named as
    glog names its files; the terminal's progress line is left out."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    @classmethod
    def start(cls, log_dir, command):
        import getpass
        import socket
        import time

        from dlcore.log import FILE_HEADER
        try:
            os.makedirs(log_dir, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            try:
                user = getpass.getuser()
            except Exception:
                user = "unknown"
            name = f"dltrain.{socket.gethostname()}.{user}.log.INFO.{stamp}.{os.getpid()}"
            path = os.path.join(log_dir, name)
            handle = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise DLTrainError(f"cannot write a log file in log_dir '{log_dir}': {err.strerror or err}") from None
        link = os.path.join(log_dir, "dltrain.INFO")
        try:
            if os.path.islink(link) or os.path.exists(link):
                os.remove(link)
            os.symlink(name, link)
        except OSError:
            pass
        handle.write(f"{FILE_HEADER}{time.strftime('%Y/%m/%d %H:%M:%S')}\n"
                     f"Running on machine: {socket.gethostname()}\n"
                     f"Command line: dltrain {' '.join(sys.argv[1:]) or command or ''}\n")
        tee = cls(sys.stderr, handle)
        sys.stderr = tee
        return tee

    def write(self, text):
        self.stream.write(text)
        if not text.startswith("\r\x1b[K"):         # the progress line's redraws
            self.file.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def close(self):
        if sys.stderr is self:
            sys.stderr = self.stream
        self.file.close()


if __name__ == "__main__":
    sys.exit(main())
