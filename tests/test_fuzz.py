"""Fuzz test: random mutations of the shipped nets and solvers, run through the CLI.

Each case takes a shipped config, mutates its text (tests/fuzz_cases.py says
how) and runs `dltrain train` or `dltrain time` on it in-process.  Every case
must end within its time limit, with no traceback, and with a non-zero exit
exactly when it printed `dltrain: error: <one line>`.  The seed is fixed, so a
failure names cases that rebuild the same anywhere.

By hand, more cases or another seed, or one case shown in full:

    python tests/test_fuzz.py --cases 2000 --seed 5 [--workers 4]
    python tests/test_fuzz.py --seed 0 --case 137
"""
import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np
import pytest

import fuzz_cases
from dlcore import ConfigError

SEED = 0
CASES = 500
WORKERS = 2


def describe(result, seed):
    """A failing case in a few lines: what was mutated, what went wrong, how to rerun it."""
    lines = [f"case {result['id']} ({result['base']}, dltrain {result['command']}): {result['failure']}"]
    lines += [f"    mutation: {m}" for m in result["mutations"]]
    if result.get("where"):
        lines.append(f"    raised at: {result['where']}")
    tail = [ln for ln in result.get("tail", []) if ln.strip()]
    if tail:
        lines.append(f"    last stderr line: {tail[-1][:240]}")
    only = f" --only {','.join(result['only'])}" if result.get("only") else ""
    lines.append(f"    rerun: python tests/test_fuzz.py --seed {seed} --case {result['id']}{only}")
    return "\n".join(lines)


def test_fuzz_shipped_configs(tmp_path):
    broken = [r for r in fuzz_cases.warm_up(str(tmp_path)) if r["failure"]]
    assert not broken, "shipped configs that do not run under the harness:\n" + "\n".join(
        f"{r['base']}: {r['failure']}: {(r.get('tail') or [''])[-1][:240]}" for r in broken)
    results = fuzz_cases.run_cases(SEED, list(range(CASES)), str(tmp_path), workers=WORKERS)
    assert [r["id"] for r in results] == list(range(CASES))
    failures = [r for r in results if r["failure"]]
    report = "\n".join(describe(r, SEED) for r in failures)
    assert not failures, f"{len(failures)} of {CASES} fuzz cases failed:\n{report}"


def test_harness_flags_each_kind_of_failure():
    """check_case itself: each rule fires on its case and stays quiet on a clean run or a clean error."""
    ok = {"exit": 0, "stderr": "I1206 19:18:31.625507  7003 solver.py:405] Optimization Done.\n"}
    clean_error = {"exit": 1, "stderr": "dltrain: error: net.prototxt:3: layer 'ip': bad\n"}
    assert fuzz_cases.check_case(ok) is None
    assert fuzz_cases.check_case(clean_error) is None
    cases = {
        "hang": {"hang": True, "limit_s": 30},
        "traceback: ValueError": {"escaped": "ValueError: x", "exit": None},
        "traceback printed": {"exit": 0, "stderr": "Exception in thread Thread-1:\nTraceback (most recent call "
                                                    "last):\nValueError\n"},
        "exit 0 after": {"exit": 0, "stderr": "dltrain: error: boom\n"},
        "internal error: ZeroDivisionError": {"exit": 1, "stderr": "dltrain: internal error: ZeroDivisionError: "
                                                                   "division by zero (run with --debug ...)\n"},
        "exit 1 without": {"exit": 1, "stderr": "I1206 19:18:31.625507  7003 solver.py:405] done\n"},
        "spans several lines": {"exit": 1, "stderr": "dltrain: error: boom\n  more of it\n"},
    }
    for expected, result in cases.items():
        assert expected in (fuzz_cases.check_case(result) or ""), (expected, result)


def test_hang_limit_spares_a_case_that_keeps_logging(tmp_path, monkeypatch):
    """A case silent past the limit is hung; one that logs all along may run several limits long."""
    import time

    import dltrain.cli.main

    def logging_main(argv):
        for _ in range(20):               # 1 s, two limits long, logging all along
            print("I1206 a log line", file=sys.stderr)
            time.sleep(0.05)
        return 0

    def silent_main(argv):
        time.sleep(3)
        return 0

    case = fuzz_cases.build_case(SEED, 7, str(tmp_path))
    monkeypatch.setattr(dltrain.cli.main, "main", logging_main)
    result = fuzz_cases.run_case(case, str(tmp_path / "logging"), limit_s=0.5)
    assert result["exit"] == 0 and result["failure"] is None
    monkeypatch.setattr(dltrain.cli.main, "main", silent_main)
    result = fuzz_cases.run_case(case, str(tmp_path / "silent"), limit_s=0.5)
    assert result.get("hang") and result["failure"].startswith("hang")


def test_cases_are_reproducible(tmp_path):
    first = fuzz_cases.build_case(SEED, 7, str(tmp_path))
    again = fuzz_cases.build_case(SEED, 7, str(tmp_path))
    other = fuzz_cases.build_case(SEED + 1, 7, str(tmp_path))
    assert first == again
    assert first["files"] != other["files"] or first["mutations"] != other["mutations"]


# --------------------------------------------------------------------------------------------------
# What the fuzz test found in the layers, kept as small direct cases
# --------------------------------------------------------------------------------------------------
def _net(layers, inputs):
    """A TRAIN net: an Input layer with the tops {name: shape}, then `layers` (prototxt)."""
    from dlcore import TRAIN, Net
    from dlcore.config import net_from_string
    tops = " ".join(f'top: "{name}"' for name in inputs)
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }" for shape in inputs.values())
    return Net(net_from_string(f'force_backward: true\nlayer {{ name: "in" type: "Input" {tops} '
                               f'input_param {{ {shapes} }} }}\n{layers}'), TRAIN)


# A layer whose top may differ in shape from its bottom (or that reads its input after writing its top),
# run in place: the top's reshape resized the input under it (a ValueError, wrong numbers, or a heap
# corrupted by the kernels).  Each must refuse, naming the layer.
IN_PLACE_REFUSED = {
    "InnerProduct": ('bottom: "x" top: "x" inner_product_param { num_output: 2 }', {"x": (2, 3)}),
    "Convolution": ('bottom: "x" top: "x" convolution_param { num_output: 3 kernel_size: 1 }', {"x": (1, 3, 4, 4)}),
    "Pooling": ('bottom: "x" top: "x" pooling_param { kernel_size: 2 }', {"x": (1, 3, 4, 4)}),
    "Embed": ('bottom: "x" top: "x" embed_param { input_dim: 4 num_output: 3 }', {"x": (2, 3)}),
    "LSTM": ('bottom: "x" bottom: "c" top: "x" recurrent_param { num_output: 5 }', {"x": (3, 2, 4), "c": (3, 2)}),
    "SoftmaxWithLoss": ('bottom: "x" bottom: "y" top: "x"', {"x": (2, 3), "y": (2,)}),
    "EuclideanLoss": ('bottom: "x" bottom: "y" top: "x"', {"x": (2, 3), "y": (2, 3)}),
    "Accuracy": ('bottom: "x" bottom: "y" top: "x"', {"x": (2, 3), "y": (2,)}),
    "Concat": ('bottom: "x" bottom: "y" top: "x"', {"x": (2, 3), "y": (2, 3)}),
    "Eltwise": ('bottom: "x" bottom: "y" top: "x" eltwise_param { operation: PROD }', {"x": (2, 3), "y": (2, 3)}),
}


@pytest.mark.parametrize("kind", sorted(IN_PLACE_REFUSED))
def test_layers_that_cannot_run_in_place_say_so(kind):
    layer, inputs = IN_PLACE_REFUSED[kind]
    with pytest.raises(ConfigError, match=rf"layer 'fuzz' \({kind}\).*does not allow in-place computation"):
        _net(f'layer {{ name: "fuzz" type: "{kind}" {layer} }}', inputs)


@pytest.mark.parametrize("eltwise", ["operation: SUM coeff: 2 coeff: -1 coeff: 3", "operation: MAX"])
def test_eltwise_in_place_gradient_equals_out_of_place(eltwise):
    """In place, bottom 0's diff is the top's: backward must write it after the others read the top's."""
    inputs = {"a": (2, 3), "b": (2, 3), "c": (2, 3)}
    rng = np.random.default_rng(0)
    values = {name: rng.uniform(-1, 1, shape) for name, shape in inputs.items()}
    top_diff = rng.uniform(-1, 1, (2, 3))
    diffs = []
    for top in ("out", "a"):
        net = _net(f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "{top}" '
                   f'eltwise_param {{ {eltwise} }} }}', inputs)
        for name, value in values.items():
            net.blobs[name].data[...] = value
        net.forward()
        net.blobs[top].diff[...] = top_diff
        net.backward()
        diffs.append([net.blobs[name].diff.copy() for name in inputs])
    for out_of_place, in_place in zip(*diffs):
        np.testing.assert_allclose(in_place, out_of_place, rtol=1e-6)


def test_log_gradient_at_zero_is_infinite_not_an_exception():
    """Caffe's powx(0, -1) is inf; Numba's integer power raised ZeroDivisionError through the CLI."""
    net = _net('layer { name: "log" type: "Log" bottom: "x" top: "y" }', {"x": (3,)})
    net.blobs["x"].data[...] = [0.0, 1.0, 2.0]
    net.forward()
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, [np.inf, 1.0, 0.5])


def test_exp_shift_that_overflows_is_a_config_error():
    with pytest.raises(ConfigError, match=r"layer 'exp' \(Exp\): base\^shift = e\^1e\+30 is not finite"):
        _net('layer { name: "exp" type: "Exp" bottom: "x" top: "y" exp_param { shift: 1e30 } }', {"x": (3,)})


# --------------------------------------------------------------------------------------------------
# By hand
# --------------------------------------------------------------------------------------------------
def _print(text):
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def show_case(seed, case_id, limit_s, only=None):
    """Build one case in a folder that is kept, run it here, and print everything."""
    fuzz_cases.prepare_process(memory_limit=False)
    folder = tempfile.mkdtemp(prefix=f"dltrain-fuzz-{seed}-{case_id}-")
    case = fuzz_cases.build_case(seed, case_id, folder, only)
    _print(f"case {case_id} of seed {seed}: {case['base']}")
    for m in case["mutations"]:
        _print(f"  mutation: {m}")
    result = fuzz_cases.run_case(case, folder, limit_s)
    _print("--- stderr ---\n" + result["stderr"].rstrip())
    _print(f"--- exit {result.get('exit')} in {result['elapsed_s']} s; capped: {result.get('capped') or 'nothing'}")
    _print(f"--- verdict: {result['failure'] or 'ok'}")
    path = f"PYTHONPATH={fuzz_cases.GRAM_FOLDER} " if case["plugin"] else ""
    _print(f"--- files in {folder}; by hand: cd {folder} && {path}dltrain {' '.join(case['argv'])}")
    return 1 if result["failure"] else 0


def run_many(seed, count, start, workers, limit_s, json_path, only=None):
    """Run `count` cases; print failures grouped by where they were raised, and a summary."""
    workdir = tempfile.mkdtemp(prefix=f"dltrain-fuzz-{seed}-")
    for r in fuzz_cases.warm_up(workdir):
        if r["failure"]:
            _print(f"the unmutated {r['base']} config: {r['failure']}: {(r.get('tail') or [''])[-1][:240]}")
    done = []

    def progress(result):
        done.append(result)
        if len(done) % 100 == 0:
            sys.stderr.write(f"{len(done)} of {count} cases\n")

    results = fuzz_cases.run_cases(seed, list(range(start, start + count)), workdir, workers, limit_s, progress,
                                   only)
    if json_path:
        with open(json_path, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    failures = [r for r in results if r["failure"]]
    groups = collections.defaultdict(list)
    for r in failures:
        groups[(r["failure"].split(":")[0], r.get("where") or (r.get("tail") or [""])[-1][:120])].append(r)
    for (kind, where), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        _print(f"\n=== {len(members)} x {kind} at {where}")
        for r in members[:3]:
            _print(describe(r, seed))
    exits = collections.Counter("ok" if r.get("exit") == 0 else "error" for r in results if not r["failure"])
    slowest = max(results, key=lambda r: r.get("elapsed_s") or 0)
    _print(f"\nseed {seed}, cases {start}..{start + count - 1}: {len(results)} run, {exits['ok']} trained or timed, "
           f"{exits['error']} clean errors, {len(failures)} failed; slowest case {slowest['id']} "
           f"({slowest.get('elapsed_s')} s)")
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fuzz dltrain with mutated shipped configs.")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cases", type=int, default=CASES, help="how many cases (default %(default)s)")
    parser.add_argument("--start", type=int, default=0, help="the first case id")
    parser.add_argument("--case", type=int, help="run this one case here and show it in full")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--limit", type=float, default=fuzz_cases.CASE_LIMIT_S, help="seconds per case")
    parser.add_argument("--json", help="write every result as a JSON line to this file")
    parser.add_argument("--only", help="comma-separated mutations to use (of: %s); give it again with --case"
                        % ", ".join(fuzz_cases.mutation_names()))
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    unknown = set(only or ()) - set(fuzz_cases.mutation_names())
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    if args.case is not None:
        return show_case(args.seed, args.case, args.limit, only)
    return run_many(args.seed, args.cases, args.start, args.workers, args.limit, args.json, only)


if __name__ == "__main__":
    sys.exit(main())
