"""The benchmark's comparisons: ArcAD against the literal transcription, and the Sinkhorn against SwAV and POT."""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from torch_arcad.functional import sinkhorn_knopp
from torch_arcad.prototypes import COSINE_BOUND

from .measure import time_calls, time_interleaved
from .reference import PAPER, SinkhornFn, literal_arcad_step, literal_discriminator, literal_sinkhorn
from .workload import CANDIDATES_PAPER, Problem, arcad_module, cosine_scores, make_inputs

__all__ = ["check_agreement", "compare_with_swav", "compare_with_pot", "LOSS_RTOL", "LOSS_ATOL", "ERROR_RTOL"]

#: Agreement tolerances (float32, different reduction orders).
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-3
#: "roughly equal" at sigma > 0, where only the random draws differ.
ROUGH_RTOL = 0.05
#: Our Sinkhorn iterations are searched up to this multiple of POT's.
POT_SEARCH_FACTOR = 8
#: Marginal errors within this relative margin count as equal (float32 rounding of the same iterate).
ERROR_RTOL = 1e-4
#: Sinkhorn iterations after which both solvers are converged (their plans then agree to rounding).
CONVERGED_ITERATIONS = 200
#: Timed calls of each Sinkhorn in the SwAV comparison (one call takes tens of milliseconds).
SINKHORN_REPEATS = 25


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def _library_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """``sinkhorn_knopp`` as ``SinkhornPrototypes`` calls it: with the cosine bound (exp domain at epsilon 0.05)."""
    return sinkhorn_knopp(scores, epsilon, iterations, score_bound=COSINE_BOUND)


def _agreement_entry(
    problem: Problem, device: torch.device, sigma: float, sinkhorn: SinkhornFn, seed: int
) -> dict[str, Any]:
    """ArcAD and the literal step (with the given Sinkhorn) on one batch: values and differences."""
    inputs = make_inputs(problem, device, seed)
    with torch.random.fork_rng(devices=[]):  # the same discriminator weights in every comparison
        torch.manual_seed(seed)
        arcad = arcad_module(problem, inputs, CANDIDATES_PAPER, sigma, device)
    discriminator = literal_discriminator(problem.dim).to(device)
    discriminator.load_state_dict(arcad.discriminator.net.state_dict())
    generator = torch.Generator(device=device).manual_seed(seed)
    ours = arcad(inputs.features, masks=inputs.masks, labels=inputs.labels, generator=generator)
    ours.loss.backward()
    grad_ours = inputs.features.grad.detach()

    features = inputs.features.detach().clone().requires_grad_(True)
    generator = torch.Generator(device=device).manual_seed(seed)
    literal = literal_arcad_step(
        features,
        inputs.masks,
        inputs.labels,
        inputs.prototypes,
        discriminator,
        num_candidates=CANDIDATES_PAPER,
        sigma=sigma,
        prefix_tokens=problem.prefix_tokens,
        generator=generator,
        sinkhorn=sinkhorn,
    )
    literal.loss.backward()
    grad_literal = features.grad.detach()

    entry: dict[str, Any] = {}
    for term in ("loss", "spm", "dgc", "cls"):
        a, b = getattr(ours, term).detach(), getattr(literal, term).detach()
        relative = _max_abs_diff(a, b) / max(abs(float(b)), LOSS_ATOL)
        entry[term] = {"arcad": float(a), "literal": float(b), "rel_diff": relative}
    entry["ema_abs_diff"] = _max_abs_diff(arcad.prototypes.prototypes, literal.prototypes)
    entry["grad_rel_diff"] = _max_abs_diff(grad_ours, grad_literal) / max(grad_literal.abs().max().item(), LOSS_ATOL)
    return entry


def _exact(entry: dict[str, Any], terms: Sequence[str], *, gradient: bool) -> bool:
    return (
        all(entry[t]["rel_diff"] <= LOSS_RTOL for t in terms)
        and entry["ema_abs_diff"] <= LOSS_ATOL
        and (not gradient or entry["grad_rel_diff"] <= GRAD_RTOL)
    )


def check_agreement(problem: Problem, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Run ``ArcAD`` and :func:`literal_arcad_step` on one batch with the same prototypes and discriminator.

    Eq. 3 is computed by the library as ``SinkhornPrototypes`` calls it (exp domain on ``exp((S - 1) / epsilon)``
    for cosine scores) and by SwAV's loop in the transcription (``exp(S / epsilon)`` without shift). The two run the
    same iteration and give the same plan to float32 rounding; each comparison is still made twice: fully literal
    (``literal_sinkhorn``), and with the library's Sinkhorn swapped into the transcription (``shared_sinkhorn``),
    which isolates every other equation.

    * ``sigma_zero``: every candidate equals its anchor. With the shared Sinkhorn the losses, the prototypes after
      the EMA step and the gradients to the features must agree to float32 rounding (``passed``).
    * ``sigma_paper``: only the random candidates may differ (the library draws noise for all N patches in
      chunks, the transcription for the normal ones at once; with the defective images last in the batch, as
      here, the normal anchors happen to receive the same draws): with the shared Sinkhorn, L_spm and the EMA
      step agree to rounding and L_dgc, L_cls within :data:`ROUGH_RTOL` (``roughly_equal``).
    * ``sinkhorn``: largest entry difference of the two plans after the preset's iterations and after
      :data:`CONVERGED_ITERATIONS`.

    Returns:
        A dictionary of plain floats and booleans.
    """
    report: dict[str, Any] = {}
    scores = cosine_scores(problem, make_inputs(problem, device, seed), normal_only=True)
    report["sinkhorn"] = {
        "iterations": PAPER.sinkhorn_iterations,
        "plan_max_abs_diff": _max_abs_diff(
            _library_sinkhorn(scores, PAPER.epsilon, PAPER.sinkhorn_iterations),
            literal_sinkhorn(scores, PAPER.epsilon, PAPER.sinkhorn_iterations),
        ),
        "converged_iterations": CONVERGED_ITERATIONS,
        "converged_plan_max_abs_diff": _max_abs_diff(
            _library_sinkhorn(scores, PAPER.epsilon, CONVERGED_ITERATIONS),
            literal_sinkhorn(scores, PAPER.epsilon, CONVERGED_ITERATIONS),
        ),
    }
    for name, sigma in (("sigma_zero", 0.0), ("sigma_paper", PAPER.sigma)):
        literal = _agreement_entry(problem, device, sigma, literal_sinkhorn, seed)
        shared = _agreement_entry(problem, device, sigma, _library_sinkhorn, seed)
        entry: dict[str, Any] = {"sigma": sigma, "literal_sinkhorn": literal, "shared_sinkhorn": shared}
        if sigma == 0.0:
            entry["passed"] = _exact(shared, ("loss", "spm", "dgc", "cls"), gradient=True)
        else:
            rough = all(shared[t]["rel_diff"] <= ROUGH_RTOL for t in ("loss", "dgc", "cls"))
            entry["roughly_equal"] = _exact(shared, ("spm",), gradient=False) and rough
        report[name] = entry
    return report


def compare_with_swav(problem: Problem, device: torch.device, iterations: int = PAPER.sinkhorn_iterations) -> dict[str, Any]:
    """``sinkhorn_knopp`` against SwAV's exp-domain loop (:func:`literal_sinkhorn`) on the same cosine scores.

    The scores are those of all N = B * grid^2 patches against the K prototypes (12,544 x 500 for
    :data:`~benchmarks.workload.DINOMALY`), at the preset's epsilon. Three solvers are timed in turn,
    :data:`SINKHORN_REPEATS` calls each (medians): the library with the cosine bound (exp domain, as
    ``SinkhornPrototypes`` calls it), the library without a bound (log domain), and SwAV's loop.

    Returns:
        Shape, epsilon, iterations, the three times, ``exp_over_swav`` and ``log_over_swav`` (time ratios) and the
        largest entry differences of the library's plans to SwAV's and to each other.
    """
    scores = cosine_scores(problem, make_inputs(problem, device), normal_only=False)
    epsilon = PAPER.epsilon
    solvers = {
        "exp": lambda: _library_sinkhorn(scores, epsilon, iterations),
        "log": lambda: sinkhorn_knopp(scores, epsilon, iterations),
        "swav": lambda: literal_sinkhorn(scores, epsilon, iterations),
    }
    plans = {name: solve() for name, solve in solvers.items()}
    times = time_interleaved(solvers, device, SINKHORN_REPEATS)
    return {
        "shape": list(scores.shape),
        "epsilon": epsilon,
        "iterations": iterations,
        "repeats": SINKHORN_REPEATS,
        "exp_time_s": times["exp"],
        "log_time_s": times["log"],
        "swav_time_s": times["swav"],
        "exp_over_swav": times["exp"] / times["swav"],
        "log_over_swav": times["log"] / times["swav"],
        "exp_vs_swav_max_abs_diff": _max_abs_diff(plans["exp"], plans["swav"]),
        "exp_vs_log_max_abs_diff": _max_abs_diff(plans["exp"], plans["log"]),
    }


def _marginal_errors(plan: Tensor) -> tuple[float, float]:
    """Max relative (column, row) marginal errors of a plan that should have rows 1/N and columns 1/K."""
    num_rows, num_cols = plan.shape
    plan = plan.double()
    column = (plan.sum(dim=0) * num_cols - 1).abs().max().item()
    row = (plan.sum(dim=1) * num_rows - 1).abs().max().item()
    return column, row


def compare_with_pot(problem: Problem, device: torch.device, pot_iterations: int, repeats: int) -> dict[str, Any]:
    """``sinkhorn_knopp`` (as ``SinkhornPrototypes`` calls it) against ``ot.bregman.sinkhorn_log`` on the normal
    patches' scores ``z mu^T``.

    Both solve the same problem: kernel ``exp(S / epsilon)`` (POT's cost ``M = -S`` with ``reg = epsilon``),
    rows 1/N and columns 1/K (ours returns rows 1 and columns N/K; it is divided by N). POT runs
    ``pot_iterations`` iterations; ours runs the fewest iterations whose column-marginal error is at most POT's
    (up to :data:`ERROR_RTOL`, float32 rounding of the same iterate). Both start from the unscaled kernel and
    end each iteration on the rows, so the row marginal holds to rounding in both. Times are medians.

    Returns:
        The errors, iteration counts, times and ``speedup`` (POT time / ours), or ``{"skipped": reason}``.
    """
    try:
        import ot
    except ImportError:
        return {"skipped": "POT is not installed (pip install POT) - Sinkhorn comparison skipped"}
    scores = cosine_scores(problem, make_inputs(problem, device), normal_only=True)
    num_rows, num_cols = scores.shape
    a = torch.full((num_rows,), 1.0 / num_rows, device=device)
    b = torch.full((num_cols,), 1.0 / num_cols, device=device)
    cost = -scores

    def pot_plan() -> Tensor:
        return ot.bregman.sinkhorn_log(a, b, cost, PAPER.epsilon, numItermax=pot_iterations, stopThr=0.0, warn=False)

    def our_plan(iterations: int) -> Tensor:
        return _library_sinkhorn(scores, PAPER.epsilon, iterations) / num_rows

    pot_column, pot_row = _marginal_errors(pot_plan())
    tolerance = pot_column * (1 + ERROR_RTOL)
    errors: dict[int, float] = {}

    def column_error(iterations: int) -> float:
        if iterations not in errors:
            errors[iterations] = _marginal_errors(our_plan(iterations))[0]
        return errors[iterations]

    cap = POT_SEARCH_FACTOR * pot_iterations
    high = 1
    while column_error(high) > tolerance and high < cap:
        high *= 2
    reached = column_error(high) <= tolerance
    low = high // 2
    while reached and high - low > 1:  # smallest count with error <= POT's (the error decreases with iterations)
        middle = (low + high) // 2
        if column_error(middle) <= tolerance:
            high = middle
        else:
            low = middle
    ours_iterations = high
    plan_diff = (our_plan(pot_iterations) - pot_plan()).abs().max().item() * num_rows * num_cols

    def discard(fn: Callable[[], Tensor]) -> Callable[[], None]:
        def call() -> None:
            fn()

        return call

    pot_plan()  # warm-up
    pot_time = statistics.median(time_calls(discard(pot_plan), device, repeats))
    ours_time = statistics.median(time_calls(discard(lambda: our_plan(ours_iterations)), device, repeats))
    ours_column, ours_row = _marginal_errors(our_plan(ours_iterations))
    return {
        "pot_version": getattr(ot, "__version__", "unknown"),
        "shape": [num_rows, num_cols],
        "epsilon": PAPER.epsilon,
        "pot_iterations": pot_iterations,
        "pot_column_error": pot_column,
        "pot_row_error": pot_row,
        "ours_iterations": ours_iterations,
        "ours_column_error": ours_column,
        "ours_row_error": ours_row,
        "reached_pot_error": reached,
        "plan_rel_diff_at_equal_iterations": plan_diff,
        "pot_time_s": pot_time,
        "ours_time_s": ours_time,
        "speedup": pot_time / ours_time,
    }

