"""The sweep report (`anydoor report SWEEP_DIR`): tables, plots, grids, links.

Reads the run folders alone (`sweep.json`, each run's `results.parquet`,
training logs and samples; no W&B server) and writes ``index.html`` and
``report.md`` with the same content, the figures as PNGs under ``figures/``
and the executed ablation notebooks as HTML under ``notebooks/``.

What each section holds follows DESIGN.md section 2: per ablation the
paper-shaped table (mean and 95% bootstrap CI per metric) with the
non-learned baselines and the untrained model as reference rows, the paired
differences against the full method with Holm-corrected significance, and
the paper's numbers (section 1b) beside ours only when the sweep used real
weights scored with the real metric backbones (section 4: every report says
which configuration produced it). A sweep scored with the embedded world's
metric backbones shows their calibration table (`eval.calibration`, from the
world manifest) in its header.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from eval.ablation import GROUND_TRUTH_METRICS, REFERENCE_ROWS, TABLE_METRICS, Ablation, load_ablation, load_index, training_curves
from eval.paper_numbers import PAPER_TABLES, paper_scores, user_study_note
from eval.sweeps import DONE, find_project_root

UNCALIBRATED_BANNER = "CLIP/DINO similarities computed with random-init backbones: not CLIP-I / DINO-I"
# How each metric source reads in the header and the summary line.
METRIC_SOURCE_TEXT = {
    "real": "real metric backbones (CLIP-I / DINO-I)",
    "in-world": "the embedded world's trained metric backbones (CLIP-I / DINO-I (in-world); calibration below)",
    "random": "random-init metric backbones (similarities, not CLIP-I / DINO-I)",
    None: "no results yet",
}
# What the mask channel gets (the notebook's `shape_control`), and what that
# means for the ground-truth metrics (docs/ARCHITECTURE.md, "What the
# ground-truth metrics can say").
PLACEMENT = {
    False: "box: the target's pose is not in the inputs; PSNR/SSIM in the mask then favour blur "
    "over a sharp object in another pose",
    True: "silhouette (shape control): the placement mask fixes the target's pose",
}
EMBEDDED_DEFAULT = "embedded default (tiny models, synthetic data)"
REAL_WEIGHTS = "real weights (base models)"
ALPHA = 0.05  # family-wise error rate of the Holm-corrected comparisons (eval.stats.compare's default)
SHORT_NAMES = {"psnr_mask": "PSNR", "ssim_mask": "SSIM"}
VERSIONED = {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "open_clip": "open_clip_torch"}
WANDB_PROJECT = "anydoor-ablations"  # the notebooks' default `wandb_project`

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } th { background: #f3f3f3; }
.banner { background: #b00020; color: #fff; font-weight: 700; font-size: 18px; padding: .8em 1em; margin: 1em 0; }
.headline { background: #eef5ee; border-left: 4px solid #2a7a3a; padding: .5em .8em; }
.note { color: #555; } img { max-width: 100%; } pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


# --------------------------------------------------------------------------- analysis


@dataclass
class _Section:
    """One ablation, analysed once for both the report and the summary text."""

    ablation: Ablation
    untrained: list[str]  # arms whose run trained for 0 steps
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def _check_dir(sweep_dir) -> Path:
    if not isinstance(sweep_dir, (str, PathLike)):
        raise TypeError(f"sweep_dir must be a path, got {type(sweep_dir).__name__} {sweep_dir!r}")
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir {str(sweep_dir)!r} is not a folder (run `anydoor sweep SPEC` first)")
    return sweep_dir


def _ablation_order(index: dict, sweep_dir: Path) -> list[str]:
    """The spec file's order (sweep.json sorts its keys), else sorted with the
    reference rows last."""
    spec = _resolve(index["spec"], sweep_dir) if index.get("spec") else None
    order = []
    if spec is not None and spec.is_file():
        try:
            order = list((yaml.safe_load(spec.read_text()) or {}).get("ablations") or {})
        except yaml.YAMLError:
            order = []
    rank = {name: i for i, name in enumerate(order)}
    return sorted(index["ablations"], key=lambda name: (rank.get(name, len(rank)), name == REFERENCE_ROWS))


def _analyse(sweep_dir: Path) -> tuple[dict, list[_Section]]:
    index = load_index(sweep_dir)
    sections = []
    for name in _ablation_order(index, sweep_dir):
        ab = load_ablation(sweep_dir, name)
        run_of = dict(zip(ab.results.get("arm", []), ab.results.get("run_id", [])))
        untrained = [
            arm for arm in ab.arms + ab.reference_arms
            if index["runs"].get(run_of.get(arm), {}).get("params", {}).get("max_steps") == 0
        ]
        section = _Section(ab, untrained)
        sections.append(section)
        if ab.results.empty:
            section.notes.append("No finished runs yet.")
            continue
        section.summary = ab.summary()
        section.table = ab.table()
        if ab.reference not in ab.arms:
            section.notes.append(f"The reference arm {ab.reference!r} has not finished: no paired differences.")
            continue
        try:
            section.comparisons = ab.comparisons()
        except ValueError as err:  # e.g. an arm evaluated on other pairs than the reference
            section.notes.append(f"No paired differences: {err}")
    return index, sections


LADDER_DIR = "ladder"  # <sweep>/ladder/: the fidelity ladder of the sweep's VAE on its benchmark (cached)


def sweep_ladder(sweep_dir: Path, index: dict) -> tuple[pd.DataFrame | None, str]:
    """The fidelity ladder (`eval.fidelity_ladder`) of the sweep's VAE on its benchmark, with the sweep's
    metric backbones, cached in ``<sweep>/ladder/``; (None, why) when it cannot be computed (the base
    preset's VAE is SD2.1's, loaded only where its weights are; a benchmark without true targets)."""
    from anydoor.world import sha256_file
    from eval.arm import arm_metric_backbones

    params = index["parameters"]
    if params.get("preset") != "tiny":
        return None, "the fidelity ladder of SD2.1's VAE: `python benchmarks/fidelity_ladder.py --vae NAME=FOLDER`"
    vae_name = params.get("vae") or None
    benchmark = _resolve(index["benchmark"], sweep_dir)
    pairs_file = benchmark / "pairs.jsonl" if benchmark is not None else None
    key = {"vae": vae_name, "world_models": params.get("world_models"), "benchmark": index["benchmark"],
           # the benchmark's content too: the demo rewrites its data in place when its settings change
           "pairs": sha256_file(pairs_file) if pairs_file is not None and pairs_file.is_file() else None,
           "metric_backbones": arm_metric_backbones(params)}
    folder = sweep_dir / LADDER_DIR
    if (folder / "key.json").is_file() and json.loads((folder / "key.json").read_text()) == key:
        return pd.read_parquet(folder / "results.parquet"), ""
    if benchmark is None or vae_name is None:
        return None, "no fidelity ladder: the benchmark is missing or the sweep's VAE is untrained"
    from diffusers import AutoencoderKL

    from anydoor import world
    from eval.backbones import load_backbones
    from eval.fidelity_ladder import fidelity_ladder

    vae_folder = world.vae_path() if vae_name == "world" else _resolve(vae_name, sweep_dir)
    if vae_folder is None:
        return None, f"no fidelity ladder: the VAE folder {vae_name!r} is missing"
    import torch

    vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=torch.float32).eval()
    try:
        rows = fidelity_ladder(benchmark, vae, load_backbones(metric_backbones=key["metric_backbones"]))
    except ValueError as err:  # e.g. a benchmark without true targets
        return None, f"no fidelity ladder: {err}"
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(folder / "results.parquet")
    (folder / "key.json").write_text(json.dumps(key, sort_keys=True))
    return rows, ""


def _with_gap_closed(section: _Section, ladder: pd.DataFrame | None) -> None:
    """Add the column G (DINO-I): the share of the identity gap between the untrained model and the
    ladder's VAE row each arm closes (`eval.stats.gap_closed`, issue 30)."""
    from eval.fidelity_ladder import LADDER_ROWS
    from eval.stats import gap_closed

    results = section.ablation.results
    if ladder is None or section.table.empty or not section.untrained or "dino_i" not in results:
        return
    ceiling = ladder[ladder["arm"] == LADDER_ROWS[-1]]
    untrained = results[results["arm"] == section.untrained[0]]
    if ceiling.empty or untrained.empty:
        return
    cells = {}
    for arm in section.table.index:
        rows = results[results["arm"] == arm]
        try:
            g = gap_closed(rows, untrained, ceiling, "dino_i")
        except ValueError:
            continue
        cells[arm] = f"{g['G']:.2f} [{g['ci_low']:.2f}, {g['ci_high']:.2f}]"
    section.table["G (DINO-I)"] = [cells.get(arm, "") for arm in section.table.index]


def _provenance(index: dict, sections: list[_Section]) -> dict:
    rows = [s.ablation.results for s in sections if not s.ablation.results.empty]
    results = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def backbones(column: str) -> str:
        names = sorted(map(str, results[column].dropna().unique())) if column in results else []
        return ", ".join(names) or "unknown"

    sources = sorted(map(str, results["metric_source"].dropna().unique())) if "metric_source" in results else []
    if len(sources) > 1:
        raise ValueError(f"the sweep's runs were scored with metric backbones of several sources {sources}")
    source = sources[0] if sources else None
    preset = index["parameters"].get("preset")
    return {
        "configuration": EMBEDDED_DEFAULT if preset == "tiny" else REAL_WEIGHTS,
        "preset": preset,
        "metric_source": source,
        "clip_backbone": backbones("clip_backbone"),
        "dino_backbone": backbones("dino_backbone"),
        # The paper's numbers are comparable only to real weights scored by trained backbones.
        "real_weights": preset not in (None, "tiny") and source == "real",
    }


def _versions() -> dict[str, str]:
    import anydoor

    versions = {"anydoor": anydoor.__version__}
    for name, dist in VERSIONED.items():
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def _run_status(sweep_dir: Path, index: dict) -> str:
    finished = []
    for rid in index.get("runs", {}):
        done = sweep_dir / "runs" / rid / DONE
        if done.is_file():
            try:
                finished.append(json.loads(done.read_text()).get("finished") or "")
            except json.JSONDecodeError:
                finished.append("")
    last = max((f for f in finished if f), default=None)
    return f"{len(finished)} of {len(index.get('runs', {}))} done" + (f", last finished {last}" if last else "")


# --------------------------------------------------------------------------- summary text


def _verdict(row: pd.Series) -> str:
    """Full method minus the other row: "beats" only when the CI excludes 0
    and the Holm-corrected p-value is below ALPHA."""
    diff, low, high = -row["mean_diff"], -row["ci_high"], -row["ci_low"]
    if row["significant"] and low > 0:
        word = "beats"
    elif row["significant"] and high < 0:
        word = "loses"
    else:
        word = "no significant difference"
    mde = row.get("mde", np.nan)
    could = f", MDE {mde:.3f}" if np.isfinite(mde) else ""
    return f"{SHORT_NAMES[row['metric']]} {word} ({diff:+.3f} [{low:+.3f}, {high:+.3f}], p_holm {row['p_holm']:.3g}{could})"


def _section_summary(section: _Section) -> list[str]:
    ab = section.ablation
    lines = [f"{ab.name} (reference arm {ab.reference or '-'}):"]
    lines += [f"  {note}" for note in section.notes]
    if section.summary.empty:
        return lines
    best = []
    for metric in GROUND_TRUTH_METRICS:
        rows = section.summary[(section.summary["metric"] == metric) & section.summary["arm"].isin(ab.arms)]
        if not rows.empty:
            top = rows.loc[rows["mean"].idxmax()]
            best.append(f"best {SHORT_NAMES[metric]} in mask: {top['arm']} {top['mean']:.3f} "
                        f"[{top['ci_low']:.3f}, {top['ci_high']:.3f}]")
    lines.append("  " + ("; ".join(best) if best else "no ground-truth metrics (benchmark without true targets)"))
    comparisons = section.comparisons
    if comparisons is None or comparisons.empty:
        return lines
    for other in section.untrained + ab.baseline_arms:
        rows = comparisons[(comparisons["arm"] == other) & comparisons["metric"].isin(GROUND_TRUTH_METRICS)]
        if not rows.empty:
            lines.append(f"  {ab.reference} vs {other}: " + "; ".join(_verdict(r) for _, r in rows.iterrows()))
    return lines


def _summary(index: dict, provenance: dict, sections: list[_Section]) -> str:
    lines = [f"sweep {index['name']}: {provenance['configuration']}; {METRIC_SOURCE_TEXT[provenance['metric_source']]}"]
    for section in sections:
        lines += _section_summary(section)
    return "\n".join(lines)


def _headline_inputs(sections: list[_Section]) -> tuple[dict, list[str], str]:
    comparisons = {s.ablation.name: (s.ablation.reference, s.comparisons) for s in sections}
    untrained = sorted({arm for s in sections for arm in s.untrained})
    names = [s.ablation.name for s in sections]
    full = REFERENCE_ROWS if REFERENCE_ROWS in names else (names[0] if names else "")
    return comparisons, untrained, full


def _gap_headline(sections: list[_Section]) -> list[str]:
    """G (DINO-I) of the full method and of AnyDoor-world from the reference rows' table, when computed."""
    from eval.headline import LONG_TRAINED_ARM

    for section in sections:
        table = section.table
        ref = section.ablation.reference
        if section.ablation.name == REFERENCE_ROWS and "G (DINO-I)" in table:
            gaps = [f"{arm} {table.loc[arm, 'G (DINO-I)']}" for arm in (ref, LONG_TRAINED_ARM)
                    if arm in table.index and table.loc[arm, "G (DINO-I)"]]
            if gaps:
                return ["Identity gap closed (G on DINO-I, from the untrained model (0) to the VAE with perfect "
                        f"latents (1)): {'; '.join(gaps)}."]
    return []


def headline_lines(sections: list[_Section]) -> list[str]:
    """The headline (`eval.headline.headline`) of analysed sections."""
    from eval.headline import headline

    own_arms = {s.ablation.name: [a for a in s.ablation.arms if a != s.ablation.reference] for s in sections}
    return headline(*_headline_inputs(sections), own_arms=own_arms)


def summary_text(sweep_dir: str | PathLike) -> str:
    """A short plain-text summary of a sweep (what the demo prints): the headline, then

    per ablation: the best of its arms on PSNR and SSIM in the target mask,
    and whether the full method (the reference arm) beats the untrained model
    and the baselines on those ground-truth metrics: "beats" when the 95% CI
    of the paired difference excludes 0 and its Holm-corrected p-value is
    below 0.05 (DESIGN.md section 2).
    """
    sweep_dir = _check_dir(sweep_dir)
    index, sections = _analyse(sweep_dir)
    first, *rest = _summary(index, _provenance(index, sections), sections).split("\n")
    return "\n".join([first, *headline_lines(sections), "", *rest])


# --------------------------------------------------------------------------- documents


def _md_cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (pandas' `to_markdown` needs tabulate).

    `index` adds the frame's index as the first column, named by its name.
    Empty and NaN cells are blank; "|" is escaped.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    body = [([idx] if index else []) + list(row) for idx, row in zip(frame.index, frame.itertuples(index=False))]
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


class _Document:
    """The report's content, written as HTML and Markdown side by side."""

    def __init__(self):
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}")

    def para(self, text: str, css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md.append(f"*{text}*" if css == "note" else f"> {text}" if css == "headline" else text)

    def banner(self, text: str) -> None:
        self.html.append(f'<div class="banner">{html.escape(text)}</div>')
        self.md.append(f"> **WARNING: {text}**")

    def table(self, frame: pd.DataFrame, index: bool = True) -> None:
        self.html.append(frame.to_html(classes="results", index=index, na_rep="", border=0, escape=True))
        self.md.append(markdown_table(frame, index=index))

    def image(self, rel: str, caption: str) -> None:
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}]({rel})")

    def links(self, items: list[tuple[str, str]]) -> None:
        self.html.append("<ul>" + "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                                          for text, href in items) + "</ul>")
        self.md.append("\n".join(f"- [{text}]({href})" for text, href in items))

    def bullets(self, items: list[str]) -> None:
        self.html.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>")
        self.md.append("\n".join(f"- {t}" for t in items))

    def code(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md.append(f"```\n{text}\n```")

    def write(self, out_dir: Path, title: str) -> Path:
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(self.html) + "\n</body></html>\n")
        (out_dir / "index.html").write_text(page, encoding="utf-8")
        (out_dir / "report.md").write_text("\n\n".join(self.md) + "\n", encoding="utf-8")
        return out_dir / "index.html"


# --------------------------------------------------------------------------- report parts


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path)
    finally:
        plt.close(fig)


def _resolve(path: str, sweep_dir: Path) -> Path | None:
    """Spec paths are relative to the project root the sweep ran from."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in (Path.cwd(), find_project_root(sweep_dir), find_project_root()):
        if (base / candidate).exists():
            return base / candidate
    return None


def _header(doc: _Document, index: dict, provenance: dict, sweep_dir: Path, headline: list[str]) -> None:
    params = index["parameters"]
    doc.heading(f"Sweep report: {index['name']}", 1)
    if provenance["metric_source"] == "random":
        doc.banner(UNCALIBRATED_BANNER)
    if index.get("description"):
        doc.para(index["description"])
    doc.heading("Headline")  # what this run supports and what it cannot, generated from the comparisons
    for line in headline:
        doc.para(line, "headline")
    items = [
        ("produced by", f"{provenance['configuration']}, preset {provenance['preset']!r}"),
        ("metric backbones", f"CLIP: {provenance['clip_backbone']}; DINO: {provenance['dino_backbone']}"),
        ("metric source", METRIC_SOURCE_TEXT[provenance["metric_source"]]),
        ("benchmark", index["benchmark"]),
        ("sampling seeds", ", ".join(map(str, params.get("seeds", [])))),
        ("sampler steps", params.get("num_inference_steps")),
        ("guidance scale", params.get("guidance_scale")),
        ("placement", PLACEMENT[bool(params.get("shape_control", False))]),
        ("training steps", params.get("max_steps")),
        ("runs", _run_status(sweep_dir, index)),
        ("sweep folder", str(sweep_dir)),
        ("spec", index.get("spec")),
        ("versions (environment rendering this report)", ", ".join(f"{k} {v}" for k, v in _versions().items())),
        ("date", datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    doc.table(pd.DataFrame(items, columns=["", "value"]).astype(str), index=False)
    if provenance["metric_source"] == "in-world" or provenance["preset"] == "tiny":
        # The world's backbones score this sweep, or are its arms' frozen ID backbones.
        _world_calibration(doc)
    doc.heading("Shared parameters (the full method)", 3)
    doc.table(pd.DataFrame([(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()],
                           columns=["parameter", "value"]), index=False)


def _world_calibration(doc: _Document) -> None:
    """The in-world backbones' calibration table (from the shipped world manifest)."""
    from anydoor.world import WorldModelError, load_manifest
    from eval.calibration import retrieval_frame, sanity_frame, zero_shot_frame

    doc.heading("Calibration of the in-world backbones", 3)
    try:
        calibration = load_manifest().get("calibration")
    except WorldModelError as err:
        doc.para(f"The world manifest cannot be read: {err}")
        return
    if not calibration:
        doc.para("The world manifest holds no calibration (run `anydoor pretrain-world --only calibration`).")
        return
    doc.para(f"On {calibration['objects']} objects never trained on, each target turned by 30-150 degrees under "
             "other lighting (anydoor/world/manifest.json). Instance retrieval: the target's object crop retrieves "
             "its own reference among all; each backbone beside its random-init floor (the same network untrained).")
    doc.table(retrieval_frame(calibration), index=False)
    doc.para("Metric sanity: similarity x100 of the reference to its true target, to another object's target, to "
             "the targets of the other objects of its colour family (what the right colour in the wrong instance "
             "scores), and to its true target blurred (sigma 3), paired over the objects.")
    doc.table(sanity_frame(calibration), index=False)
    doc.para("Zero-shot attribute accuracy from caption prompts:")
    doc.table(zero_shot_frame(calibration), index=False)


def _paper_columns(section: _Section, provenance: dict) -> tuple[pd.DataFrame, str | None]:
    """The table with the paper's CLIP-I / DINO-I beside ours (real weights),
    or unchanged with a note saying why they are absent."""
    ab, table = section.ablation, section.table
    key = ab.paper_table
    if key is None or key not in PAPER_TABLES or table.empty:
        return table, None
    title = PAPER_TABLES[key].title
    if not provenance["real_weights"]:
        return table, (f"The paper's numbers ({title}) are not shown: they are not comparable to the "
                       f"{EMBEDDED_DEFAULT if provenance['preset'] == 'tiny' else METRIC_SOURCE_TEXT[provenance['metric_source']]} "
                       "of this sweep.")
    table = table.copy()
    scores = [paper_scores(key, arm) for arm in table.index]
    table["paper CLIP-I"] = [f"{s[0]:.1f}" if s else "" for s in scores]
    table["paper DINO-I"] = [f"{s[1]:.1f}" if s else "" for s in scores]
    return table, (f"paper CLIP-I / DINO-I: {title}, on the paper's DreamBooth x COCO benchmark (2,400 composites; "
                   f"its CLIP backbone is not stated, ours is {provenance['clip_backbone']}).")


def _comparison_frame(section: _Section) -> pd.DataFrame:
    ab, cmp = section.ablation, section.comparisons
    order = {arm: i for i, arm in enumerate(ab.all_arms)}
    metric_order = {m: i for i, m in enumerate(TABLE_METRICS)}
    cmp = cmp.assign(_m=cmp["metric"].map(metric_order), _a=cmp["arm"].map(order)).sort_values(["_m", "_a"])
    return pd.DataFrame({
        "arm": cmp["arm"],
        "metric": cmp["label"],
        "n_pairs": cmp["n_pairs"],
        "mean diff": [f"{v:+.3f}" for v in cmp["mean_diff"]],
        "95% CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(cmp["ci_low"], cmp["ci_high"])],
        "p (Holm)": [f"{p:.3g}" for p in cmp["p_holm"]],
        "significant": np.where(cmp["significant"], "yes", "no"),
        # The smallest difference this run could detect at 80% power (Bonferroni over the arms).
        "MDE": [f"{v:.3f}" if np.isfinite(v) else "-" for v in cmp.get("mde", pd.Series(np.nan, index=cmp.index))],
    })


def _figures(doc: _Document, section: _Section, sweep_dir: Path, index: dict, out_dir: Path) -> None:
    from eval.plots import ablation_sample_grid, loss_curves, metric_bars

    ab = section.ablation
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ab.name)
    figures = out_dir / "figures"
    metrics = [m for m in TABLE_METRICS if m in set(section.summary["metric"])]
    _save(metric_bars(section.summary, ab.all_arms, metrics, title=ab.description), figures / f"{stem}_metrics.png")
    doc.image(f"figures/{stem}_metrics.png", "mean per arm with 95% bootstrap CI")
    curves = {arm: df for arm, df in training_curves(sweep_dir, ab).items() if not df.empty and "loss" in df}
    if curves:
        _save(loss_curves(curves), figures / f"{stem}_loss.png")
        doc.image(f"figures/{stem}_loss.png", "training loss per step")
    else:
        doc.para("No training logs (untrained arms, or metrics.jsonl missing).", "note")
    benchmark = _resolve(index["benchmark"], sweep_dir)
    if benchmark is None:
        doc.para(f"No sample grid: benchmark {index['benchmark']!r} not found from here.", "note")
        return
    seed = (index["parameters"].get("seeds") or [0])[0]
    _save(ablation_sample_grid(sweep_dir, ab, benchmark, pair_index=0, seed=seed), figures / f"{stem}_samples.png")
    doc.image(f"figures/{stem}_samples.png", f"first benchmark pair, seed {seed}: reference | scene | true target | "
              "each arm's result (same pair and initial noise)")


def _render_notebooks(sweep_dir: Path, out_dir: Path) -> dict[str, str]:
    """`<sweep_dir>/notebooks/*.ipynb` -> `notebooks/<stem>.html`; stem -> relative link."""
    sources = sorted((sweep_dir / "notebooks").glob("*.ipynb"))
    if not sources:
        return {}
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    links = {}
    for source in sources:
        body, _ = exporter.from_notebook_node(nbformat.read(source, as_version=4))
        (out_dir / "notebooks" / f"{source.stem}.html").write_text(body, encoding="utf-8")
        links[source.stem] = f"notebooks/{source.stem}.html"
    return links


def _notebook_for(name: str, notebooks: dict[str, str]) -> str | None:
    """The executed notebook of an ablation: named like it, or like `01_<name>`."""
    for stem, link in notebooks.items():
        if stem == name or stem.endswith(f"_{name}"):
            return link
    return None


def _ablation_section(doc, section, sweep_dir, index, provenance, notebooks, out_dir) -> None:
    ab = section.ablation
    doc.heading(f"{ab.name}: {ab.description}" if ab.description else ab.name)
    runs = "; ".join(f"{arm}: " + ", ".join(f"runs/{rid}" for rid in rids) for arm, rids in ab.run_ids.items())
    doc.para(f"Reference arm (the full method): {ab.reference}. Run folders: {runs}.")
    if ab.missing:
        doc.para(f"Missing (not finished): {', '.join(ab.missing)}.", "note")
    for note in section.notes:
        doc.para(note, "note")
    if not section.table.empty:
        table, paper_note = _paper_columns(section, provenance)
        doc.heading("Table: mean [95% bootstrap CI over pairs]", 3)
        doc.table(table)
        if paper_note:
            doc.para(paper_note, "note")
    if section.comparisons is not None and not section.comparisons.empty:
        doc.heading(f"Paired differences against {ab.reference} (row minus {ab.reference})", 3)
        doc.para(f"Matched on (pair, seed); 95% bootstrap CI over pairs; sign-flip p-values, Holm-corrected "
                 f"across the rows of each metric; significant when p (Holm) < {ALPHA}.", "note")
        doc.table(_comparison_frame(section), index=False)
    if not section.summary.empty:
        doc.heading("Figures", 3)
        _figures(doc, section, sweep_dir, index, out_dir)
    link = _notebook_for(ab.name, notebooks)
    if link:
        doc.links([(f"executed notebook: {Path(link).stem}", link)])
    elif ab.name != REFERENCE_ROWS:
        doc.para(f"No executed notebook for {ab.name} in {sweep_dir / 'notebooks'}.", "note")


def _wandb_section(doc: _Document, index: dict, sweep_dir: Path) -> None:
    doc.heading("Weights & Biases")
    folders = sorted(sweep_dir.glob("runs/*/wandb/offline-run-*")) + sorted(sweep_dir.glob("ablations/*/wandb/offline-run-*"))
    folders = [f.relative_to(sweep_dir).as_posix() for f in folders if f.is_dir()]
    if not folders:
        doc.para("No offline W&B run folders in the sweep (runs logged online, or W&B was disabled).", "note")
    else:
        doc.para(f"{len(folders)} offline run folders (one per arm run, job_type arm; one per ablation, "
                 "job_type ablation). Publish them with:")
        doc.code(f"cd {sweep_dir.resolve()}\nwandb sync " + " \\\n    ".join(folders))
    doc.para(f"To compare arms in the W&B workspace (project {WANDB_PROJECT}, the notebooks' default): group runs by "
             f"`group` (= the sweep, {index['name']!r}) and filter `job_type = arm`; a parallel-coordinates panel "
             "over the config keys (id_extractor, remove_background, detail_map, timestep_sampler, max_steps, "
             "guidance_scale) and the runs table with the `eval/*` summary metrics as columns show every arm; "
             "the job_type ablation runs hold each ablation's table and comparisons.")


def render_report(sweep_dir: str | PathLike, out_dir: str | PathLike | None = None) -> Path:
    """Render `index.html` and `report.md` for a sweep; returns the index path.

    Args:
        sweep_dir: the sweep folder (`sweep.json`, `runs/`, `baselines/`,
            optionally `notebooks/*.ipynb` executed ablation notebooks).
        out_dir: where to write; default `reports/<sweep name>/` under the
            project root. Existing files of the same names are replaced.
    """
    sweep_dir = _check_dir(sweep_dir)
    if out_dir is not None and not isinstance(out_dir, (str, PathLike)):
        raise TypeError(f"out_dir must be a path or None, got {type(out_dir).__name__} {out_dir!r}")
    index, sections = _analyse(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else find_project_root() / "reports" / index["name"]
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    provenance = _provenance(index, sections)
    notebooks = _render_notebooks(sweep_dir, out_dir)

    doc = _Document()
    ladder, no_ladder = sweep_ladder(sweep_dir, index)
    for section in sections:
        _with_gap_closed(section, ladder)
    _header(doc, index, provenance, sweep_dir, headline_lines(sections) + _gap_headline(sections))
    from eval.headline import summary_table

    doc.heading("Summary")
    doc.para("Every paired comparison of the sweep: reference arm minus the other row, 95% bootstrap CI, "
             "Holm-adjusted p (within each ablation and metric), and the MDE: the smallest difference this run "
             "could detect at 80% power. A 'no detectable difference' reads against its MDE.", "note")
    doc.table(summary_table(_headline_inputs(sections)[0]), index=False)
    doc.heading("Fidelity ladder: where identity is lost before any model")
    if ladder is None:
        doc.para(no_ladder, "note")
    else:
        from eval.fidelity_ladder import ladder_frame, ladder_table

        doc.para("The true target; its crop in the pipeline's geometry pasted back; that crop through the sweep's "
                 "VAE with perfect latents (posterior mean). Scored like the arms (similarities x100 to the pair's "
                 "reference, retrieval among the benchmark's references by DINO-I), mean [95% CI]; difference to "
                 "the target row [CI]. G (DINO-I) in the tables below: the share of the gap between the untrained "
                 "model and the VAE row an arm closes.", "note")
        doc.table(ladder_frame(ladder_table(ladder), str(ladder["metric_source"].iloc[0])), index=False)
    if provenance["real_weights"]:
        doc.para(user_study_note(), "note")
    for section in sections:
        _ablation_section(doc, section, sweep_dir, index, provenance, notebooks, out_dir)
    if notebooks:
        doc.heading("Executed notebooks")
        doc.links([(stem, link) for stem, link in notebooks.items()])
    _wandb_section(doc, index, sweep_dir)
    return doc.write(out_dir, f"Sweep report: {index['name']}")
