"""Speed and memory of :class:`torch_arcad.ArcAD` against a literal transcription of the paper's eq. 3-9.

Usage::

    python -m benchmarks.speed [--quick] [--device cpu|cuda] [--out results.json] [--sinkhorn-only]

What it measures:

1. Agreement: the literal transcription (:mod:`benchmarks.reference`) and ``ArcAD`` compute the same terms. With
   ``sigma = 0`` every candidate equals its anchor, so both must give the same losses, prototypes after the EMA
   step and gradients to float32 rounding; with the paper's sigma only the random draws differ.
2. The Dinomaly-sized step (16 images x 784 patches, D = 768, K = 500, one defective image with a defect over
   about 10 % of it): forward + backward time (median of several repeats after warm-up) and peak memory of
   ``ArcAD`` and of the literal transcription, at N_cand 50 (released code) and 5 (paper). Each configuration
   runs in a fresh subprocess so that its peak is its own.
3. ``sinkhorn_knopp`` against SwAV's exp-domain loop on the same 12,544 x 500 cosine scores, and against POT's
   ``ot.bregman.sinkhorn_log`` (optional) at equal column-marginal error.
4. Sweeps over the number of patches N and of prototypes K, with the fitted exponent of time ~ size^p.

The batches and both implementations are in :mod:`benchmarks.workload`, the comparisons in
:mod:`benchmarks.comparisons`, timing and memory measurement in :mod:`benchmarks.measure`; this file is the driver.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

if __name__ == "__main__" and not __package__:  # run as a file: ``benchmarks`` is importable only as a package
    command = " ".join(["python -m benchmarks.speed", *sys.argv[1:]])
    sys.exit(f"run this benchmark as a module, from the repository root: {command}")

from benchmarks.comparisons import check_agreement, compare_with_pot, compare_with_swav  # noqa: E402
from benchmarks.measure import (  # noqa: E402
    KIB,
    count_host_syncs,
    environment,
    fit_exponent,
    load_average,
    peak_memory,
    time_calls,
)
from benchmarks.workload import (  # noqa: E402
    CANDIDATES_OFFICIAL,
    CANDIDATES_PAPER,
    DINOMALY,
    QUICK,
    Problem,
    build_step,
    make_inputs,
)

__all__ = ["main", "measure_configuration"]

#: Targets: ArcAD's peak memory and time against the literal transcription at N_cand 50, and the Sinkhorn's time
#: against SwAV's exp-domain loop.
MEMORY_TARGET = 5.0
SPEED_TARGET = 2.0
SINKHORN_TARGET = 1.3
#: Fitted exponent up to which growth counts as linear (or better).
LINEAR_EXPONENT_MAX = 1.15
RESULT_PREFIX = "RESULT "


def measure_configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration of the Dinomaly-sized comparison, in this process.

    Args:
        spec: ``{"implementation": "arcad" | "literal", "num_candidates": int, "problem": Problem fields,
            "device": str, "repeats": int, "seed": int}``.

    Returns:
        ``{"time_s": median, "times_s": [...]}`` and the entries of :func:`peak_memory`, or ``{"error": ...}`` when
        the device runs out of memory. The memory is measured on the first full-size call (after a tiny one that
        loads the libraries), which is also the warm-up of the timed calls.
    """
    device = torch.device(spec["device"])
    problem = Problem(**spec["problem"])
    inputs = make_inputs(problem, device, spec["seed"])
    step, tiny_step = build_step(spec["implementation"], problem, inputs, spec["num_candidates"], device, spec["seed"])
    try:
        tiny_step()
        memory = peak_memory(step, device)
        times = time_calls(step, device, spec["repeats"])
        syncs = count_host_syncs(step, device)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        return {"error": f"out of memory: {error}".splitlines()[0]}
    result = {"time_s": statistics.median(times), "times_s": times, **memory}
    if syncs is not None:
        result["host_syncs_forward"] = syncs
    return result


def _run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_configuration` in a fresh Python process, so its memory peak is its own."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--threads",
        str(torch.get_num_threads()),
        "--worker",
        json.dumps(spec),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {"error": f"worker exited with {done.returncode}: {done.stderr.strip()[-2000:]}"}


def _sweep(problems: Sequence[Problem], device: torch.device, repeats: int, key: str) -> dict[str, Any]:
    """ArcAD's step time (N_cand of the paper) at each problem size, and the fitted exponent of time ~ size^p."""
    sizes, medians = [], []
    for problem in problems:
        inputs = make_inputs(problem, device)
        step, _ = build_step("arcad", problem, inputs, CANDIDATES_PAPER, device)
        step()  # warm-up at this size
        medians.append(statistics.median(time_calls(step, device, repeats)))
        sizes.append(problem.num_patches if key == "N" else problem.num_prototypes)
        del inputs, step
    exponent = fit_exponent(sizes, medians)
    return {"sizes": sizes, "time_s": medians, "exponent": exponent}


def _configurations() -> list[tuple[str, str, int]]:
    """(name, implementation, N_cand) of the Dinomaly-sized comparison."""
    return [
        (f"{implementation}_ncand{candidates}", implementation, candidates)
        for candidates in (CANDIDATES_OFFICIAL, CANDIDATES_PAPER)
        for implementation in ("arcad", "literal")
    ]


def _sweep_problems(quick: bool) -> tuple[list[Problem], list[Problem]]:
    if quick:
        base = QUICK
        by_n = [replace(base, batch=b) for b in (2, 4, 8)]
        by_k = [replace(base, num_prototypes=k) for k in (8, 16, 32)]
    else:
        base = DINOMALY
        # B images of 28 x 28 patches: N = 2,352 / 4,704 / 12,544 / 25,088 / 50,176, one defective image per 16.
        by_n = [replace(base, batch=b, defective_images=max(1, b // 16)) for b in (3, 6, 16, 32, 64)]
        by_k = [replace(base, num_prototypes=k) for k in (100, 250, 500, 1000, 2000)]
    return by_n, by_k


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any], key: str) -> float | None:
    if key not in numerator or key not in denominator or denominator[key] <= 0:
        return None
    return numerator[key] / denominator[key]


def _mib(value: float) -> str:
    return f"{value / KIB**2:9.1f}"


def _print_agreement(agreement: dict[str, Any]) -> None:
    sink = agreement["sinkhorn"]
    print(
        f"\nSinkhorn plans, library vs literal exp-domain: max |diff| {sink['plan_max_abs_diff']:.2e} after "
        f"{sink['iterations']} iterations, {sink['converged_plan_max_abs_diff']:.2e} after "
        f"{sink['converged_iterations']}"
    )
    for name, verdict in (("sigma_zero", "passed"), ("sigma_paper", "roughly_equal")):
        entry = agreement[name]
        print(
            f"agreement at sigma {entry['sigma']} (shared Sinkhorn): {'PASS' if entry[verdict] else 'FAIL'} "
            f"[{'exact' if verdict == 'passed' else 'only the random draws differ'}]"
        )
        print(f"  {'term':5s} {'arcad':>10s} {'literal, shared Sinkhorn':>26s} {'literal, literal Sinkhorn':>27s}")
        for term in ("loss", "spm", "dgc", "cls"):
            shared, literal = entry["shared_sinkhorn"][term], entry["literal_sinkhorn"][term]
            print(f"  {term:5s} {shared['arcad']:10.6f} {shared['literal']:26.6f} {literal['literal']:27.6f}")
        print(
            f"  EMA max |diff| {entry['shared_sinkhorn']['ema_abs_diff']:.1e} / "
            f"{entry['literal_sinkhorn']['ema_abs_diff']:.1e}, gradient max rel diff "
            f"{entry['shared_sinkhorn']['grad_rel_diff']:.1e} / {entry['literal_sinkhorn']['grad_rel_diff']:.1e}"
        )


def _print_dinomaly(problem: dict[str, Any], dinomaly: dict[str, Any], ratios: dict[str, Any]) -> None:
    print(
        f"\nforward + backward, N = {problem['num_patches']}, D = {problem['dim']}, K = {problem['num_prototypes']}, "
        f"{problem['anomalous_patches']} anomalous patches"
    )
    print(f"  {'configuration':18s} {'time (s)':>10s} {'peak (MiB)':>10s} {'rss (MiB)':>10s}")
    for name, entry in dinomaly.items():
        if "error" in entry:
            print(f"  {name:18s} {entry['error']}")
        else:
            rss = _mib(entry["peak_rss_bytes"]) if "peak_rss_bytes" in entry else f"{'-':>9s}"
            print(f"  {name:18s} {entry['time_s']:10.3f} {_mib(entry['peak_bytes'])} {rss}")
    for name, ratio in ratios.items():
        print(f"  {name:38s} {'n/a' if ratio is None else f'{ratio:6.2f}x'}")


def _print_sinkhorn(swav: dict[str, Any], pot: dict[str, Any]) -> None:
    print(
        f"\nSinkhorn {swav['shape'][0]} x {swav['shape'][1]}, epsilon {swav['epsilon']}, {swav['iterations']} it, "
        f"median of {swav['repeats']}: SwAV loop {swav['swav_time_s'] * 1e3:.1f} ms; sinkhorn_knopp exp domain "
        f"{swav['exp_time_s'] * 1e3:.1f} ms ({swav['exp_over_swav']:.2f}x), log domain "
        f"{swav['log_time_s'] * 1e3:.1f} ms ({swav['log_over_swav']:.2f}x); plans max |diff| "
        f"{swav['exp_vs_swav_max_abs_diff']:.1e} to SwAV, {swav['exp_vs_log_max_abs_diff']:.1e} exp to log"
    )
    if "skipped" in pot:
        print(f"{pot['skipped']}")
    else:
        print(
            f"Sinkhorn {pot['shape'][0]} x {pot['shape'][1]}: POT sinkhorn_log {pot['pot_iterations']} it "
            f"(column error {pot['pot_column_error']:.2e}) {pot['pot_time_s']:.4f} s; ours {pot['ours_iterations']} it "
            f"(column error {pot['ours_column_error']:.2e}) {pot['ours_time_s']:.4f} s; speed-up {pot['speedup']:.2f}x"
        )


def _print_report(results: dict[str, Any]) -> None:
    """The results as text, section by section (a ``--sinkhorn-only`` run has only the Sinkhorn section)."""
    env = results["environment"]
    print(
        f"device {env['device']} ({env.get('gpu', env['cpu'])}), torch {env['torch']}, {env['torch_threads']} threads, "
        f"load average {env['load_average_start']} -> {env.get('load_average_end')}"
    )
    if "agreement" in results:
        _print_agreement(results["agreement"])
    if "dinomaly" in results:
        _print_dinomaly(results["problem"], results["dinomaly"], results["ratios"])
    _print_sinkhorn(results["sinkhorn_vs_swav"], results["sinkhorn_vs_pot"])
    for key, sweep in results.get("sweeps", {}).items():
        points = ", ".join(f"{s}: {t:.3f}s" for s, t in zip(sweep["sizes"], sweep["time_s"], strict=True))
        print(f"\nsweep over {key}: {points}; exponent {sweep['exponent']:.2f}")

    print("\ntargets")
    for name, target in results["targets"].items():
        value = target["value"]
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"  {name:30s} {shown:>6s} (target {target['target']}) {'MET' if target['met'] else 'NOT MET'}")


def _target(value: float | None, target: float, *, at_least: bool) -> dict[str, Any]:
    met = value is not None and (value >= target if at_least else value <= target)
    return {"value": value, "target": f"{'>=' if at_least else '<='} {target:g}", "met": met}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the report and return (and optionally write) the results.

    Args:
        argv: command-line arguments (``--quick``, ``--device``, ``--out``, ``--repeats``, ``--pot-iterations``,
            ``--threads``, ``--in-process``, ``--sinkhorn-only``); ``sys.argv[1:]`` when None.

    Returns:
        The results dictionary written to ``--out``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test of seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3; quick 1)")
    parser.add_argument("--pot-iterations", type=int, default=None, help="POT iterations (default 50; quick 10)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every configuration in this process (default with --quick; peaks are cleaner isolated)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 with --quick, where tiny operations only pay for "
        "thread synchronisation)",
    )
    parser.add_argument(
        "--sinkhorn-only",
        action="store_true",
        help="only the Sinkhorn comparisons (against SwAV's loop and POT): seconds instead of minutes",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None and threads < 1:
        parser.error(f"--threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if args.worker is not None:
            print(RESULT_PREFIX + json.dumps(measure_configuration(json.loads(args.worker))), flush=True)
            return {}
        return _run(parser, args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Everything :func:`main` does once the arguments are parsed and the thread count is set."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    pot_iterations = args.pot_iterations if args.pot_iterations is not None else (10 if args.quick else 50)
    in_process = args.in_process or args.quick
    problem = QUICK if args.quick else DINOMALY
    started = time.perf_counter()

    inputs = make_inputs(problem, device)
    side = problem.grid
    patch_mask = F.adaptive_max_pool2d(inputs.masks.unsqueeze(1), (side, side)).flatten(1) > 0.5
    anomalous_patches = int(patch_mask[inputs.labels != 0].sum())
    del inputs

    results: dict[str, Any] = {
        "environment": environment(device),
        "settings": {
            "quick": args.quick,
            "sinkhorn_only": args.sinkhorn_only,
            "repeats": repeats,
            "pot_iterations": pot_iterations,
            "isolation": "in-process" if in_process else "subprocess",
        },
        "problem": {**asdict(problem), "num_patches": problem.num_patches, "anomalous_patches": anomalous_patches},
    }
    sections: dict[str, float] = {}
    targets: dict[str, Any] = {}
    mark = time.perf_counter()

    if not args.sinkhorn_only:
        agreement_problem = QUICK if args.quick else replace(QUICK, batch=4, dim=128, num_prototypes=64)
        results["agreement"] = check_agreement(agreement_problem, device)
        sections["agreement"], mark = time.perf_counter() - mark, time.perf_counter()

        dinomaly: dict[str, Any] = {}
        for name, implementation, candidates in _configurations():
            spec = {
                "implementation": implementation,
                "num_candidates": candidates,
                "problem": asdict(problem),
                "device": str(device),
                "repeats": repeats,
                "seed": 0,
            }
            dinomaly[name] = measure_configuration(spec) if in_process else _run_isolated(spec)
        results["dinomaly"] = dinomaly
        results["ratios"] = _ratios(dinomaly)
        sections["dinomaly"], mark = time.perf_counter() - mark, time.perf_counter()
        memory_ratio = results["ratios"][f"memory literal/arcad, N_cand {CANDIDATES_OFFICIAL}"]
        speed_ratio = results["ratios"][f"time literal/arcad, N_cand {CANDIDATES_OFFICIAL}"]
        targets[f"memory (N_cand {CANDIDATES_OFFICIAL})"] = _target(memory_ratio, MEMORY_TARGET, at_least=True)
        targets[f"speed (N_cand {CANDIDATES_OFFICIAL})"] = _target(speed_ratio, SPEED_TARGET, at_least=True)

    results["sinkhorn_vs_swav"] = compare_with_swav(problem, device)
    results["sinkhorn_vs_pot"] = compare_with_pot(problem, device, pot_iterations, repeats)
    sections["sinkhorn"], mark = time.perf_counter() - mark, time.perf_counter()
    swav_ratio = results["sinkhorn_vs_swav"]["exp_over_swav"]
    targets["Sinkhorn time / SwAV loop"] = _target(swav_ratio, SINKHORN_TARGET, at_least=False)

    if not args.sinkhorn_only:
        by_n, by_k = _sweep_problems(args.quick)
        results["sweeps"] = {"N": _sweep(by_n, device, repeats, "N"), "K": _sweep(by_k, device, repeats, "K")}
        sections["sweeps"] = time.perf_counter() - mark
        for key in ("N", "K"):
            exponent = results["sweeps"][key]["exponent"]
            targets[f"linear in {key} (exponent)"] = _target(exponent, LINEAR_EXPONENT_MAX, at_least=False)

    results["targets"] = targets
    results["settings"]["wall_s"] = time.perf_counter() - started
    results["settings"]["section_s"] = sections
    results["environment"]["load_average_end"] = load_average()

    _print_report(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.out}")
    return results


def _ratios(dinomaly: dict[str, Any]) -> dict[str, float | None]:
    """Time and memory of the literal transcription over ArcAD's, like for like and released code vs paper."""
    ratios = {}
    for candidates in (CANDIDATES_OFFICIAL, CANDIDATES_PAPER):
        ours, literal = dinomaly[f"arcad_ncand{candidates}"], dinomaly[f"literal_ncand{candidates}"]
        ratios[f"time literal/arcad, N_cand {candidates}"] = _ratio(literal, ours, "time_s")
        ratios[f"memory literal/arcad, N_cand {candidates}"] = _ratio(literal, ours, "peak_bytes")
    paper_default = dinomaly[f"arcad_ncand{CANDIDATES_PAPER}"]
    official_literal = dinomaly[f"literal_ncand{CANDIDATES_OFFICIAL}"]
    ratios[f"time literal {CANDIDATES_OFFICIAL}/arcad {CANDIDATES_PAPER}"] = _ratio(
        official_literal, paper_default, "time_s"
    )
    ratios[f"memory literal {CANDIDATES_OFFICIAL}/arcad {CANDIDATES_PAPER}"] = _ratio(
        official_literal, paper_default, "peak_bytes"
    )
    return ratios


if __name__ == "__main__":
    main()
