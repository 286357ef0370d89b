"""Run records of the cold-start benchmark: one JSON file per run, loaded into a typed :class:`RunRecord`.

A record holds a run's settings, its metrics (every score kind's I-AUROC, P-AUROC, P-F1-max and AUPRO as
fractions), its wall times, the fused score's fit, the harness's resolved configuration and its training
diagnostics: in full (the per-step history, as the runner writes it) or compact (the history replaced by its
summary and local paths by their last component, as ``--export`` writes it and ``benchmarks/results`` keeps it).
Both load the same way, and the tables read nothing a compact record lacks.

Layout: ``<folder>/runs/<category>/<detector>/<arm>/seed<s>.json`` (:func:`run_file`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIRST_WINDOW",
    "LAST_WINDOW",
    "RESUME_IGNORED",
    "RUN_FORMAT_VERSION",
    "RunRecord",
    "STORED_IGNORED",
    "SettingsMismatch",
    "diagnostics_summary",
    "load_runs",
    "run_file",
    "settings_differences",
    "write_json",
    "write_text",
]

#: Version of the per-run file format.
RUN_FORMAT_VERSION: int = 1
#: Settings that may differ between a stored run and a resumed benchmark: they do not change a run's result.
RESUME_IGNORED: tuple[str, ...] = ("seeds", "log_every", "arms", "feature_cache")
#: Settings that may also differ between a run of a ``--stored`` folder and this benchmark: where the data set lies.
STORED_IGNORED: tuple[str, ...] = (*RESUME_IGNORED, "data_root")
#: Windows of the training history averaged for the "first" and "last" values of the diagnostics.
FIRST_WINDOW: float = 0.05
LAST_WINDOW: float = 0.1
#: A prototype is "in use" when it receives a positive share of the hard assignments.
USAGE_EPS: float = 0.0
#: Paths in the harness's configuration that a compact record names by their last component.
_LOCAL_PATHS: tuple[str, ...] = ("data_root", "split_path", "output_dir", "resume_dir")


class SettingsMismatch(ValueError):
    """A stored run was made with other settings than the benchmark asks for."""


def run_file(folder: Path, category: str, detector: str, arm: str, seed: int) -> Path:
    """Where one run is stored: ``folder/runs/<category>/<detector>/<arm>/seed<seed>.json``."""
    return Path(folder) / "runs" / category / detector / arm / f"seed{seed}.json"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run of the benchmark.

    Attributes:
        settings: the benchmark's shared settings the run was made with (see :func:`settings_differences`).
        category, baseline, arm, seed: what was run (``baseline`` is the detector's name in the harness).
        split: the cold-start manifest (a path in a full record, its file name in a compact one).
        scores: ``{score kind: {metric: fraction}}`` (a baseline run has ``recon`` only).
        train_time_s, eval_time_s, wall_time_s: seconds.
        torch_threads: torch's CPU threads during the run.
        diagnostics: the harness's diagnostics with the per-step history (full records); ``None`` when compact.
        fusion: the harness's fused-score fit per model (weights, training AUROC per map).
        harness_config: the harness's resolved configuration.
        harness_split: the split's image counts per category.
        diagnostics_summary: :func:`diagnostics_summary` of the history (compact records); ``None`` in full ones.
        format_version: :data:`RUN_FORMAT_VERSION` of the file.
        extra: keys of the file this version does not know, kept so that the record writes back unchanged.
    """

    settings: Mapping[str, Any]
    category: str
    baseline: str
    arm: str
    seed: int
    split: str
    scores: Mapping[str, Mapping[str, float]]
    train_time_s: float
    eval_time_s: float
    wall_time_s: float
    torch_threads: int | None = None
    diagnostics: Any = None
    fusion: Mapping[str, Any] | None = None
    harness_config: Mapping[str, Any] | None = None
    harness_split: Mapping[str, Any] | None = None
    diagnostics_summary: Mapping[str, Any] | None = None
    format_version: int = RUN_FORMAT_VERSION
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # -------------------------------------------------------------------------------------- reading and writing

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from its JSON form (full or compact; files written by earlier versions of the runner load)."""
        missing = [k for k in ("category", "baseline", "arm", "seed", "scores") if k not in data]
        if missing:
            raise ValueError(f"not a run record: no {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        version = int(data.get("format_version", RUN_FORMAT_VERSION))
        if version > RUN_FORMAT_VERSION:
            raise ValueError(f"run record format {version} is newer than this benchmark's ({RUN_FORMAT_VERSION})")
        return cls(
            settings=dict(data.get("settings") or {}),
            category=str(data["category"]),
            baseline=str(data["baseline"]),
            arm=str(data["arm"]),
            seed=int(data["seed"]),
            split=str(data.get("split", "")),
            scores={kind: dict(values) for kind, values in data["scores"].items()},
            train_time_s=float(data.get("train_time_s", math.nan)),
            eval_time_s=float(data.get("eval_time_s", math.nan)),
            wall_time_s=float(data.get("wall_time_s", math.nan)),
            torch_threads=data.get("torch_threads"),
            diagnostics=data.get("diagnostics"),
            fusion=data.get("fusion"),
            harness_config=data.get("harness_config"),
            harness_split=data.get("harness_split"),
            diagnostics_summary=data.get("diagnostics_summary"),
            format_version=version,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Read one run file."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in the order the runner writes them (a loaded file writes back byte for byte)."""
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "settings": dict(self.settings),
            "category": self.category,
            "baseline": self.baseline,
            "arm": self.arm,
            "seed": self.seed,
            "split": self.split,
            "scores": {kind: dict(values) for kind, values in self.scores.items()},
            "train_time_s": self.train_time_s,
            "eval_time_s": self.eval_time_s,
            "wall_time_s": self.wall_time_s,
            "torch_threads": self.torch_threads,
            "diagnostics": self.diagnostics,
            "fusion": self.fusion,
            "harness_config": self.harness_config,
            "harness_split": self.harness_split,
        }
        if self.diagnostics_summary is not None:
            data["diagnostics_summary"] = self.diagnostics_summary
        data.update(self.extra)
        return data

    def save(self, path: Path) -> None:
        """Write the record as JSON (atomically)."""
        write_json(path, self.to_dict())

    # -------------------------------------------------------------------------------------- what the tables read

    @property
    def key(self) -> tuple[str, str, str, int]:
        """``(category, detector, arm, seed)``."""
        return self.category, self.baseline, self.arm, self.seed

    @property
    def is_compact(self) -> bool:
        """Whether the per-step history was replaced by its summary."""
        return self.diagnostics is None and self.diagnostics_summary is not None

    def percent(self, kind: str, metric: str) -> float:
        """A metric of a score kind in percent (``nan`` when the run does not have it)."""
        return 100.0 * float(self.scores.get(kind, {}).get(metric, math.nan))

    def summary(self) -> dict[str, Any]:
        """The summary of the training diagnostics (stored in a compact record, computed from a full one)."""
        if isinstance(self.diagnostics_summary, Mapping):
            return dict(self.diagnostics_summary)
        return diagnostics_summary(self.diagnostics, self.category)

    def model_diagnostics(self) -> Mapping[str, Any]:
        """This run's model entry of the full diagnostics (``{}`` for a compact record)."""
        if not isinstance(self.diagnostics, Mapping):
            return {}
        entry = self.diagnostics.get(self.category)
        return entry if isinstance(entry, Mapping) else {}

    @property
    def encoder(self) -> str | None:
        """The frozen encoder the detector ran on (from the settings, else the harness's configuration)."""
        value = self.settings.get("encoder") or (self.harness_config or {}).get("encoder")
        return None if value is None else str(value)

    # -------------------------------------------------------------------------------------- checks and export

    def compact(self) -> RunRecord:
        """The record without its per-step history and local paths, for ``--export`` (metrics and settings only).

        The history is replaced by :func:`diagnostics_summary` of it, which is all the tables use; the split, the
        data folder and the other local paths are named by their last component (``make_split`` with the seed
        makes the split again). Compacting a compact record changes nothing.
        """
        settings = dict(self.settings)
        if "data_root" in settings:  # named, not located: the data folder may lie anywhere (STORED_IGNORED)
            settings["data_root"] = Path(str(settings["data_root"])).name
        config = self.harness_config
        if isinstance(config, Mapping):
            config = {k: (Path(str(v)).name if k in _LOCAL_PATHS and v is not None else v) for k, v in config.items()}
        return dataclasses.replace(
            self,
            settings=settings,
            split=Path(self.split).name,
            diagnostics=None,
            diagnostics_summary=self.summary(),
            harness_config=config,
        )

    def check_settings(self, settings: Mapping[str, Any], ignored: Sequence[str] = RESUME_IGNORED,
                       where: Path | str | None = None) -> None:
        """Raise :class:`SettingsMismatch` when the run was made with other ``settings`` (keys in ``ignored`` aside)."""
        differences = settings_differences(self.settings, settings, ignored)
        if differences:
            text = ", ".join(f"{k}: stored {stored!r}, now {now!r}" for k, (stored, now) in differences.items())
            raise SettingsMismatch(
                f"{where or 'the run'} was written with other settings ({text}). Use another --output folder or "
                "remove the file."
            )


def settings_differences(
    stored: Mapping[str, Any], settings: Mapping[str, Any], ignored: Sequence[str] = RESUME_IGNORED
) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between a stored run and the benchmark: ``{key: (stored, now)}``."""
    keys = sorted(k for k in set(stored) | set(settings) if k not in ignored and stored.get(k) != settings.get(k))
    return {k: (stored.get(k), settings.get(k)) for k in keys}


def load_runs(folder: Path) -> list[RunRecord]:
    """Every run stored under ``folder/runs`` (full or compact), in path order."""
    return [RunRecord.load(path) for path in _run_paths(Path(folder))]


def _run_paths(folder: Path) -> Iterator[Path]:
    runs = folder / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"no runs under {folder} (expected {runs}/<category>/<detector>/<arm>/seed<s>.json)")
    return iter(sorted(runs.glob("*/*/*/seed*.json")))


# ------------------------------------------------------------------------------------------ diagnostics


def _window_mean(values: Sequence[float], fraction: float, tail: bool) -> float:
    """Mean of the first (or last) ``fraction`` of ``values`` (at least one value)."""
    n = max(1, int(len(values) * fraction))
    return statistics.fmean(values[-n:] if tail else values[:n])


def diagnostics_summary(diagnostics: Any, category: str | None = None) -> dict[str, Any]:
    """Condense the harness's diagnostics of one run (a baseline run's history has its loss terms only).

    The harness records, per model (``diagnostics[category]`` in the single setting), a ``history`` of per-step
    dicts (``loss``, ``loss_recon``, ``loss_arcad``, ``loss_spm``, ``loss_dgc``, ``loss_cls``, ``initialized``,
    ``anomalous_fraction``, ``disc_acc_normal`` / ``_synthetic`` / ``_real``) and ``prototype_usage``: the number
    of normal patches nearest to each prototype, summed over all steps. Steps before the prototypes were
    initialised are left out. Single steps are noisy, so "first" is the mean of the first
    :data:`FIRST_WINDOW` of the steps and "last" the mean of the last :data:`LAST_WINDOW` (at least one step each).

    Args:
        diagnostics: the ``"diagnostics"`` entry of a harness result (or one model's entry).
        category: the model's name to pick from ``diagnostics``.

    Returns:
        ``{"terms": {term: {"first", "last"}}, "anomalous_fraction": {"first", "last", "mean"},
        "discriminator_accuracy": {kind: {"first", "last"}}, "prototypes_used", "num_prototypes", "max_share",
        "effective_prototypes"}`` (the effective number is ``exp`` of the usage's entropy: K for even use, 1 when
        one prototype takes everything); keys whose source is absent are left out.
    """
    if not isinstance(diagnostics, Mapping):
        return {}
    diag: Mapping[str, Any] = diagnostics
    if category is not None and isinstance(diag.get(category), Mapping):
        diag = diag[category]
    summary: dict[str, Any] = {}

    series: dict[str, list[float]] = {}
    history = diag.get("history")
    if isinstance(history, Sequence):
        for entry in history:
            if not isinstance(entry, Mapping) or entry.get("initialized") is False:
                continue
            for key, value in entry.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    series.setdefault(key, []).append(float(value))

    def window(values: list[float]) -> dict[str, float]:
        return {"first": _window_mean(values, FIRST_WINDOW, False), "last": _window_mean(values, LAST_WINDOW, True)}

    terms = {k: window(v) for k, v in series.items() if k.startswith("loss")}
    if terms:
        summary["terms"] = terms
    if "anomalous_fraction" in series:
        values = series["anomalous_fraction"]
        summary["anomalous_fraction"] = {**window(values), "mean": statistics.fmean(values)}
    accuracy = {k.removeprefix("disc_acc_"): window(v) for k, v in series.items() if k.startswith("disc_acc")}
    if accuracy:
        summary["discriminator_accuracy"] = accuracy

    usage = diag.get("prototype_usage")
    if isinstance(usage, Sequence) and usage and all(isinstance(u, (int, float)) for u in usage):
        total = float(sum(usage))
        summary["num_prototypes"] = len(usage)
        summary["prototypes_used"] = sum(1 for u in usage if u > USAGE_EPS)
        summary["max_share"] = max(usage) / total if total > 0 else math.nan
        # Uniform use would give every prototype 1 / K; the effective number exp(entropy) says how many are in use.
        shares = [u / total for u in usage if u > 0] if total > 0 else []
        summary["effective_prototypes"] = math.exp(-sum(p * math.log(p) for p in shares)) if shares else math.nan
    return summary


# ------------------------------------------------------------------------------------------ files


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "detach"):  # tensors
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file renamed into place)."""
    write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
