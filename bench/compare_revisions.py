"""Before/after figures of a change: the same bench scripts on two revisions, interleaved, in one run.

    python bench/compare_revisions.py BASE_REV [--repeats 2] [--digits-runs 2] [--skip lstm ...]

BASE_REV (a commit, tag or branch) is checked out in a temporary git worktree; "after" is this
working tree as it is.  For each revision, in alternation so machine noise hits both alike:

* ``bench/lenet.py``      LeNet forward+backward, batch 64 (dltrain and PyTorch, median round),
* ``bench/lstm.py``       the LSTM training step, T=20 N=32 64 -> 256,
* ``bench/train_step.py`` the LeNet training step (SGD, momentum, weight decay),
* digits                  wall time of the whole ``configs/digits`` training run (3,000 iterations
                          and its tests; kernel caches warm) and its final test accuracy.

Each script is first run once per revision and its figures discarded (compilation, cache
warm-up).  Reported: each revision's median dltrain figure, the PyTorch figure of the same
runs, and after/before.  Needs torch (``pip install torch==2.13.0``) and the project installed
(``pip install -e .``); the base revision runs from its own folder, first on ``sys.path``.
"""
import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"lenet": ("bench/lenet.py", ["--rounds", "3", "--iterations", "20"]),
           "lstm": ("bench/lstm.py", ["--rounds", "3", "--iterations", "10"]),
           "train_step": ("bench/train_step.py", ["--rounds", "3", "--iterations", "30", "--startup-runs", "1"])}
FIGURE = re.compile(r"^\s*(dltrain|torch)\s+([\d.]+) ms", re.M)

# Imported at start-up (Python's site module imports ``sitecustomize`` from sys.path) in every run
# of a tree: the installed package maps ``dltrain.layers`` etc. to THIS checkout's folders (an
# editable install), so each tree's own folders are mapped first, read from its pyproject.toml.
TREE_IMPORTS = """
import importlib.abc, importlib.util, os, sys, tomllib
_tree = os.environ["DLTRAIN_BENCH_TREE"]
with open(os.path.join(_tree, "pyproject.toml"), "rb") as _f:
    _dirs = tomllib.load(_f).get("tool", {}).get("setuptools", {}).get("package-dir", {})

class _TreeFolders(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        folder = _dirs.get(name)
        if folder is None:
            return None
        folder = os.path.join(_tree, folder)
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])

sys.meta_path.insert(0, _TreeFolders())
"""


@functools.cache
def tree_env(tree):
    """The environment that runs ``tree``'s code: its folder first on the path, its subpackages mapped."""
    hook = os.path.join(tree, ".bench_imports")
    os.makedirs(hook, exist_ok=True)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(TREE_IMPORTS)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([tree, hook]), DLTRAIN_BENCH_TREE=tree)


def run_script(tree, script, extra):
    proc = subprocess.run([sys.executable, script, *extra], cwd=tree, capture_output=True, text=True,
                          env=tree_env(tree))
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed in {tree}:\n{proc.stdout}\n{proc.stderr}")
    found = dict((name, float(value)) for name, value in FIGURE.findall(proc.stdout))
    if "dltrain" not in found:
        raise SystemExit(f"{script} in {tree}: no 'dltrain ... ms' line in:\n{proc.stdout}")
    return found


def digits_command(tree):
    # The namespace moved in issue 10: `python -m dltrain`, before that `python -m cli.main`.
    module = "dltrain" if os.path.exists(os.path.join(tree, "dltrain", "__main__.py")) else "cli.main"
    return [sys.executable, "-m", module, "configs/digits/solver.prototxt"]


def run_digits(tree):
    start = time.perf_counter()
    proc = subprocess.run(digits_command(tree), cwd=tree, capture_output=True, text=True,
                          env=tree_env(tree))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"digits failed in {tree}:\n{proc.stderr[-2000:]}")
    accuracy = re.findall(r"Test net output #\d+: accuracy = ([\d.]+)", proc.stderr + proc.stdout)
    return wall, float(accuracy[-1]) if accuracy else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the revision to compare against")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each script per revision")
    parser.add_argument("--digits-runs", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=[*SCRIPTS, "digits"])
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="dltrain-base-")
    base = os.path.join(folder, "tree")
    subprocess.run(["git", "worktree", "add", "--detach", base, args.base], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {"before": base, "after": ROOT}
    try:
        rows = []
        for name, (script, extra) in SCRIPTS.items():
            if name in args.skip:
                continue
            for tree in trees.values():
                run_script(tree, script, extra)                  # warm-up: compile, fill caches
            figures = {label: [] for label in trees}
            for _ in range(args.repeats):
                for label, tree in trees.items():
                    figures[label].append(run_script(tree, script, extra))
            row = [name]
            for label in trees:
                row.append(statistics.median(f["dltrain"] for f in figures[label]))
                row.append(statistics.median(f.get("torch", float("nan")) for f in figures[label]))
            rows.append(row)
            print(f"{name}: done", file=sys.stderr)
        if "digits" not in args.skip:
            for tree in trees.values():
                run_digits(tree)
            walls = {label: [] for label in trees}
            accuracy = {}
            for _ in range(args.digits_runs):
                for label, tree in trees.items():
                    wall, accuracy[label] = run_digits(tree)
                    walls[label].append(wall)
            digits = [statistics.median(walls["before"]), accuracy["before"],
                      statistics.median(walls["after"]), accuracy["after"]]
        print(f"base {args.base} vs this tree; machine: {os.cpu_count()} CPUs; median of {args.repeats} runs")
        print(f"{'benchmark':28s} {'before':>10s} {'(torch)':>9s} {'after':>10s} {'(torch)':>9s} {'after/before':>13s}")
        for name, before, ref_before, after, ref_after in rows:
            print(f"{name:28s} {before:8.2f}ms {ref_before:7.2f}ms {after:8.2f}ms {ref_after:7.2f}ms "
                  f"{after / before:13.2f}")
        if "digits" not in args.skip:
            before, acc_before, after, acc_after = digits
            print(f"digits, whole 3,000-iteration run (wall, median of {args.digits_runs}): before {before:.2f} s "
                  f"(test accuracy {acc_before:.2%}), after {after:.2f} s ({acc_after:.2%}), "
                  f"after/before {after / before:.2f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
