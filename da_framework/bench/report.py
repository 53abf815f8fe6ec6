"""``da report``: a sweep's run records -> Markdown and LaTeX tables and PNG plots.

Tables (``report.md`` / ``report.tex`` in the results folder), every cell mean ± std over seeds:

1. Headline: ``target_test_accuracy`` per method x domain pair, plus the average over pairs
   (per seed, then mean ± std).  Among grid points of a method the run is chosen per pair and
   seed by one validator, ``source_val_accuracy`` by default (``--select``); the table says
   which.  The best mean of every column is bold.
2. Model selection side by side: for every validator, the target accuracy (average over
   pairs) of the run it picks among each method's grid points, and in the last row among all
   methods and grid points.  The oracle column reads target labels and is marked.
3. Validator scores and proxy A-distance of each method (mean over pairs and seeds).
4. Proxy A-distance per pair (source-only = before adaptation).

A domain-generalisation sweep (configs with ``eval_target_val``, e.g. DomainBed's protocol)
gets DomainBed's three model-selection tables first (:mod:`da_framework.bench.dg_selection`);
its leave-one-out runs feed those and are left out of the others.

Plots (``plots/``): accuracy curves per pair and 2-D feature embeddings per pair.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from da_framework.bench.selection import DEFAULT_VALIDATOR, VALIDATORS, select_best
from da_framework.errors import UserError


@dataclasses.dataclass(frozen=True)
class TableData:
    """A formatted table: header, row labels, cell strings and which cells are bold."""

    title: str
    header: list[str]
    rows: list[list[str]]
    bold: list[list[bool]]
    note: str = ""


def _json_records(results_dir: Path, skipped: list[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every da_framework record under ``results_dir`` with its path (hidden folders such as
    checkpoints skipped).  Files that are not valid JSON or not records are not silently
    dropped: each is appended to ``skipped`` as ``"<path>: <why>"``."""
    if not results_dir.is_dir():
        raise UserError(f"no results folder {results_dir}; run `da bench <sweep> --results-dir ...` first")
    out = []
    for path in sorted(results_dir.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(results_dir).parts):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = f"not valid JSON ({e})"
        else:
            if isinstance(rec, dict) and str(rec.get("format", "")).startswith("da_framework."):
                out.append((path, rec))
                continue
            why = "not a da_framework record (no 'format' field)"
        if skipped is not None:
            skipped.append(f"{path}: {why}")
    return out


def load_records(results_dir: Path, found: Sequence[tuple[Path, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Every run record under ``results_dir`` (or among ``found``, from :func:`_json_records`)."""
    out = []
    for path, rec in _json_records(results_dir) if found is None else found:
        if str(rec.get("format", "")).startswith("da_framework.run"):
            out.append({**rec, "_path": str(path)})
    if not out:
        raise UserError(f"no run records under {results_dir}")
    return out


def load_diverged(results_dir: Path, found: Sequence[tuple[Path, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The records of runs that diverged (non-finite loss) under ``results_dir`` (or among ``found``)."""
    from da_framework.bench.sweep import DIVERGED_FORMAT

    return [rec for _, rec in (_json_records(results_dir) if found is None else found) if rec.get("format") == DIVERGED_FORMAT]


def diverged_markdown(diverged: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown section listing diverged runs (empty list when there are none)."""
    if not diverged:
        return []
    lines = ["", "### Diverged runs", "",
             f"{len(diverged)} run(s) stopped on a non-finite loss; they are left out of every table above.", "",
             "| method @ grid point | pair | seed | error |", "|---|---|---|---|"]
    for r in diverged:
        lines.append(f"| {_point_label(r)} | {pair_name(r)} | {r['seed']} | {r['error'].split(';')[0]} |")
    return lines + [""]


def pair_name(record: Mapping[str, Any]) -> str:
    """``source→target`` of a record, without a common ``family/`` prefix (digits/source→rotate)."""
    s, t = record["config"]["source"], record["config"]["target"]
    fam_s, fam_t = s.split("/")[0], t.split("/")[0]
    return f"{s}→{t.split('/', 1)[1]}" if "/" in t and fam_s == fam_t else f"{s}→{t}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary_table(
    title: str,
    cells: Mapping[str, Mapping[str, Sequence[float]]],
    columns: Sequence[str],
    better: str | None = "max",
    scale: float = 100.0,
    digits: int = 1,
    first_header: str = "method",
    note: str = "",
) -> TableData:
    """Formats ``cells[row][column] = per-seed values`` as mean ± std with the best mean bold.

    Args:
      title: table title.
      cells: row label -> column label -> values over seeds (missing column: "–").
      columns: column order.
      better: ``"max"``, ``"min"`` or None (no bold).
      scale: multiply values by this before printing (100: percent).
      digits: decimals printed.
      first_header: header of the row-label column.
      note: a sentence printed under the table.
    """
    # A cell over fewer seeds than the table's others is marked "(n=k)" and never bold: a
    # one-seed mean must not win a column of three-seed means.
    full = max((len(v) for row in cells.values() for v in row.values()), default=0)
    short = {(r, c) for r, row in cells.items() for c, v in row.items() if better and 0 < len(v) < full}
    means = {r: {c: mean_std(v)[0] for c, v in row.items() if len(v) and (r, c) not in short} for r, row in cells.items()}
    best = {}
    for c in columns:
        col = [m[c] for m in means.values() if c in m and not math.isnan(m[c])]
        if better and col:
            best[c] = max(col) if better == "max" else min(col)
    rows, bold = [], []
    for r, row in cells.items():
        line, flags = [r], [False]
        for c in columns:
            if c not in row or not len(row[c]):
                line.append("–"), flags.append(False)
                continue
            m, s = mean_std(row[c])
            text = f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" if len(row[c]) > 1 else f"{m * scale:.{digits}f}"
            if (r, c) in short:
                text += f" (n={len(row[c])})"
            line.append(text)
            flags.append((r, c) not in short and c in best and round(m * scale, digits) == round(best[c] * scale, digits))
        rows.append(line), bold.append(flags)
    if short:
        note = (note + " " if note else "") + (f"(n=k): over k of the {full} seeds only (runs missing); not bolded.")
    return TableData(title, [first_header, *columns], rows, bold, note)


def to_markdown(table: TableData) -> str:
    """The table as GitHub Markdown (bold cells as ``**x**``)."""
    lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(table.header) - 1)) + "|"]
    for row, flags in zip(table.rows, table.bold):
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(row, flags)) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("→", r"$\to$"), ("†", r"$^\dagger$")):
        text = text.replace(a, b)
    return text


def to_latex(table: TableData) -> str:
    """The table as a LaTeX ``table``/``tabular`` (booktabs rules, bold as ``\\textbf``)."""

    def cell(text: str, b: bool) -> str:
        t = _tex_escape(text).replace(" ± ", r" $\pm$ ")
        return rf"\textbf{{{t}}}" if b else t

    lines = [
        r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex_escape(table.title)}}}",
        r"\begin{tabular}{l" + "c" * (len(table.header) - 1) + "}", r"\toprule",
        " & ".join(_tex_escape(h) for h in table.header) + r" \\", r"\midrule",
    ]
    lines += [" & ".join(cell(c, b) for c, b in zip(row, flags)) + r" \\" for row, flags in zip(table.rows, table.bold)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def method_name(record: Mapping[str, Any]) -> str:
    """The method a record belongs to: as the sweep names it (a loss-weight grid point's
    ``config.method`` is the resolved spec), else its config's method."""
    return record.get("sweep_method") or record["config"]["method"]


def _index(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """(method, pair, seed) -> the runs of every grid point."""
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[(method_name(r), pair_name(r), int(r["seed"]))].append(r)
    return out


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _with_average(per: Mapping[str, Mapping[int, float]], pairs: Sequence[str]) -> dict[str, list[float]]:
    """Per-pair lists over seeds, plus 'avg' over pairs per seed (seeds present in every pair)."""
    out = {p: list(per[p].values()) for p in pairs if p in per}
    common = set.intersection(*(set(per[p]) for p in pairs)) if all(p in per for p in pairs) else set()
    if common:
        out["avg"] = [statistics.fmean(per[p][s] for p in pairs) for s in sorted(common)]
    return out


def headline_table(records: Sequence[dict[str, Any]], select: str = DEFAULT_VALIDATOR, metric: str = "target_test_accuracy") -> TableData:
    """Table 1: ``metric`` per method x pair (+ avg), run chosen among grid points by ``select``."""
    idx = _index(records)
    methods, pairs = _ordered([k[0] for k in idx]), _ordered([k[1] for k in idx])
    cells = {}
    for m in methods:
        per: dict[str, dict[int, float]] = defaultdict(dict)
        for (mm, p, s), runs in idx.items():
            if mm == m:
                chosen = select_best(runs, select) if len(runs) > 1 else runs[0]
                per[p][s] = chosen["metrics"][metric]
        cells[m] = _with_average(per, pairs)
    n_seeds = len({k[2] for k in idx})
    n_grid = max(len(v) for v in idx.values())
    oracle = " (ORACLE: uses target labels)" if VALIDATORS[select].uses_target_labels else ""
    note = (f"{metric} in %, mean ± std over {n_seeds} seed(s); avg = mean over pairs per seed. "
            + (f"Among {'up to ' if len({len(v) for v in idx.values()}) > 1 else ''}{n_grid} grid points per method, each run is selected by `{select}`{oracle}. " if n_grid > 1 else "One configuration per method (no selection needed). ")
            + "Bold: best mean per column.")
    return summary_table(f"Headline: {metric} (%)", cells, [*pairs, "avg"], note=note)


def selection_table(records: Sequence[dict[str, Any]]) -> TableData:
    """Table 2: target accuracy (avg over pairs) of the run each validator selects."""
    idx = _index(records)
    methods, pairs = _ordered([k[0] for k in idx]), _ordered([k[1] for k in idx])
    seeds = sorted({k[2] for k in idx})
    names = [v for v in VALIDATORS if all(v in r.get("selection", {}) for r in records)]
    label = {v: v + (" †" if VALIDATORS[v].uses_target_labels else "") for v in names}
    cells: dict[str, dict[str, list[float]]] = {}
    candidates = {m: {(p, s): idx.get((m, p, s), []) for p in pairs for s in seeds} for m in methods}
    candidates["any method"] = {(p, s): [r for m in methods for r in idx.get((m, p, s), [])] for p in pairs for s in seeds}
    for row, cands in candidates.items():
        cells[row] = {}
        for v in names:
            per_seed = []
            for s in seeds:
                picks = [select_best(cands[(p, s)], v)["metrics"]["target_test_accuracy"] for p in pairs if cands[(p, s)]]
                if len(picks) == len(pairs):
                    per_seed.append(statistics.fmean(picks))
            cells[row][label[v]] = per_seed
    note = ("Target test accuracy (%, average over pairs, mean ± std over seeds) of the run each validator picks: per method "
            "among its grid points, and in the last row among all methods and grid points. † ORACLE: reads target labels, "
            "not a valid unsupervised selection; shown as an upper bound. With one grid point per method the per-method rows "
            "are equal across validators.")
    return summary_table("Model selection side by side", cells, [label[v] for v in names], note=note)


def scores_table(records: Sequence[dict[str, Any]]) -> TableData:
    """Table 3: raw validator scores and proxy A-distance per method (mean over pairs and seeds)."""
    methods = _ordered([method_name(r) for r in records])
    keys = [v for v in VALIDATORS if all(v in r.get("selection", {}) for r in records)]
    cells = {}
    for m in methods:
        rs = [r for r in records if method_name(r) == m]
        cells[m] = {k: [r["selection"][k] for r in rs] for k in keys}
        pads = [r["analysis"]["proxy_a_distance"] for r in rs if "proxy_a_distance" in r.get("analysis", {})]
        if pads:
            cells[m]["proxy A-distance"] = pads
    cols = keys + (["proxy A-distance"] if any("proxy A-distance" in c for c in cells.values()) else [])
    note = ("Raw scores over all runs of a method (every pair, seed and grid point), no bold. Higher is better for "
            + ", ".join(k for k in keys if VALIDATORS[k].higher_is_better) + "; lower for "
            + ", ".join(k for k in keys if not VALIDATORS[k].higher_is_better) + ". Proxy A-distance: 0 = domains indistinguishable, 2 = separable.")
    return summary_table("Validator scores", cells, cols, better=None, scale=1.0, digits=3, note=note)


def pad_table(records: Sequence[dict[str, Any]]) -> TableData:
    """Table 4: proxy A-distance per method x pair on held-out source/target test features."""
    idx = _index(records)
    methods, pairs = _ordered([k[0] for k in idx]), _ordered([k[1] for k in idx])
    cells = {}
    for m in methods:
        per: dict[str, dict[int, float]] = defaultdict(dict)
        for (mm, p, s), runs in idx.items():
            if mm == m and "proxy_a_distance" in runs[0].get("analysis", {}):
                per[p][s] = statistics.fmean(r["analysis"]["proxy_a_distance"] for r in runs)
        cells[m] = _with_average(per, pairs) if per else {}
    note = ("Proxy A-distance 2(1-2·err) of a linear domain classifier on held-out features (Ben-David et al., 2007); "
            "source_only = before adaptation. Bold: lowest (most aligned).")
    return summary_table("Proxy A-distance (before = source_only, after = adapted)", cells, [*pairs, "avg"], better="min", scale=1.0, digits=2, note=note)


def write_plots(records: Sequence[dict[str, Any]], out_dir: Path, embedding: str = "pca") -> list[Path]:
    """Accuracy curves and feature embeddings, one PNG of each per domain pair."""
    from da_framework.bench.analysis import plot_curves, plot_embedding

    idx = _index(records)
    methods, pairs = _ordered([k[0] for k in idx]), _ordered([k[1] for k in idx])
    written = []
    for p in pairs:
        stem = p.replace("/", "_").replace("→", "_to_")
        hist = {m: [runs[0]["history"] for (mm, pp, s), runs in sorted(idx.items()) if mm == m and pp == p] for m in methods}
        hist = {m: h for m, h in hist.items() if h}  # a partial sweep may lack a method on this pair
        written.append(plot_curves(hist, out_dir / f"curves_{stem}.png", ("source_train_accuracy", "target_test_accuracy"), title=p))
        panels = {}
        for m in methods:
            runs = sorted(((s, runs) for (mm, pp, s), runs in idx.items() if mm == m and pp == p), key=lambda t: t[0])
            if not runs:
                continue
            rec = runs[0][1][0]
            fpath = Path(rec["_path"]).with_name(rec["features_file"]) if rec.get("features_file") else None
            if fpath is not None and fpath.is_file():
                with np.load(fpath) as f:
                    panels[m] = {k: f[k] for k in f.files}
        if panels:
            written.append(plot_embedding(panels, out_dir / f"embedding_{stem}.png", embedding, title=f"{p}: {embedding.upper()} of features (seed {min(s for (_, pp, s) in idx if pp == p)})"))
    return written


def _point_label(record: Mapping[str, Any]) -> str:
    hp = record.get("hparams") or {}
    name = method_name(record)
    return name + (" @ " + ", ".join(f"{k}={v}" for k, v in hp.items()) if hp else "")


def grid_table(records: Sequence[dict[str, Any]], metric: str = "target_test_accuracy") -> TableData:
    """Table 2 of a sweep with a grid: ``metric`` of every grid point of every method, no selection.

    One row per (method, grid point), e.g. ``coral @ weight:coral=100``, one column per pair
    plus their average; it shows what the validators of the selection table choose among.
    """
    pairs = _ordered([pair_name(r) for r in records])
    per_point: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        per_point[_point_label(r)][pair_name(r)][int(r["seed"])] = r["metrics"][metric]
    cells = {label: _with_average(per, pairs) for label, per in per_point.items()}
    note = (f"{metric} in %, mean ± std over seeds, of every grid point (no model selection); "
            "avg = mean over pairs per seed. Bold: best mean per column.")
    return summary_table(f"Every grid point: {metric} (%)", cells, [*pairs, "avg"], note=note)


def write_report(
    results_dir: Path, select: str = DEFAULT_VALIDATOR, metric: str = "target_test_accuracy", embedding: str = "pca",
    skipped: list[str] | None = None,
) -> list[Path]:
    """Writes ``report.md``, ``report.tex`` and ``plots/*.png`` into ``results_dir``; returns the paths.

    Every JSON file left out (not valid JSON, not a record, a record of another kind) is
    listed at the top of ``report.md`` and appended to ``skipped`` (if given) as
    ``"<path>: <why>"``, so the command can warn about it.
    """
    if select not in VALIDATORS:
        raise UserError(f"unknown validator {select!r}; valid: {', '.join(VALIDATORS)}")
    skipped = [] if skipped is None else skipped
    found = _json_records(results_dir, skipped)  # read every file once for both kinds of record
    from da_framework.bench.sweep import DIVERGED_FORMAT

    skipped += [f"{p}: a {r['format']} record, not a sweep run" for p, r in found
                if not str(r["format"]).startswith("da_framework.run") and r["format"] != DIVERGED_FORMAT]
    records = load_records(results_dir, found)
    check_metric(records, metric)
    tables, n_runs = [], len(records)
    if any(r["config"].get("eval_target_val") for r in records):  # a DG sweep: DomainBed's three rules first
        from da_framework.bench.dg_selection import dg_tables

        tables += dg_tables(records)
        records = [r for r in records if "," not in r["config"]["target"]]  # leave-one-out runs only feed those
    tables.append(headline_table(records, select, metric))
    if any(r.get("hparams") for r in records):
        tables.append(grid_table(records, metric))
    if all("selection" in r for r in records):
        tables += [selection_table(records), scores_table(records)]
    if any("proxy_a_distance" in r.get("analysis", {}) for r in records):
        tables.append(pad_table(records))
    plots = write_plots(records, results_dir / "plots", embedding)
    md = [f"# Results: {results_dir.name}", "", f"{n_runs} runs" + (f" ({n_runs - len(records)} leave-one-out runs, read only by the DomainBed tables)"
                                              if n_runs > len(records) else "") + f". Headline model selection: `{select}`.", ""]
    if skipped:
        md += [f"**{len(skipped)} JSON file(s) under this folder are not run records and were left out:**", ""]
        md += [f"- `{line}`" for line in skipped] + [""]
    md += [to_markdown(t) for t in tables]
    from da_framework.train.alarms import alarms_markdown

    md += diverged_markdown(load_diverged(results_dir, found)) + alarms_markdown(records, lambda r: f"{_point_label(r)} {pair_name(r)} seed {r['seed']}")
    md += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(results_dir)})" for p in plots]
    (results_dir / "report.md").write_text("\n".join(md) + "\n")
    (results_dir / "report.tex").write_text("% generated by `da report`; needs \\usepackage{booktabs}\n" + "\n".join(to_latex(t) for t in tables))
    return [results_dir / "report.md", results_dir / "report.tex", *plots]


def check_metric(records: Sequence[Mapping[str, Any]], metric: str) -> None:
    """Raises UserError unless ``metric`` is a number in every record's metrics (listing the valid ones)."""
    numeric = [{k for k, v in r["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for r in records]
    if not all(metric in keys for keys in numeric):
        valid = sorted(set.intersection(*numeric)) if numeric else []
        raise UserError(f"unknown metric {metric!r} (not a number in every record); valid: {', '.join(valid)}")
