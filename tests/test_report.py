"""The sweep report (eval/report.py), the paper's numbers and the demo spec.

The sweep folders are written by the tests with the runner's columns and
planted values (no model runs): the full method is better than the other
arms, the untrained model and the baselines by a margin far above the noise.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import PIL.Image
import pytest
import yaml

from anydoor.cli import main
from anydoor.data.synthetic import write_synthetic_dataset
from eval.paper_numbers import PAPER_TABLES, paper_scores
from eval.report import PLACEMENT, UNCALIBRATED_BANNER, markdown_table, render_report, summary_text
from eval.sweeps import SweepSpec, write_sweep_index

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1]
# Planted PSNR per arm; SSIM is PSNR / 40. The full method wins everywhere.
PSNR = {"full": 20.0, "clip": 17.0, "none": 18.0, "untrained": 8.0, "scene": 10.0, "copy_paste": 14.0}
ABLATIONS = {
    "id_extractor": {"description": "ID extractor (paper Table 4)", "paper_table": "table4", "reference": "dinov2",
                     "arms": {"clip": {"id_extractor": "clip"}, "dinov2": {}}},
    "detail_map": {"description": "Detail map (paper Table 5)", "paper_table": "table5", "reference": "hf",
                   "arms": {"none": {"detail_map": "none"}, "hf": {}}},
    "reference_rows": {"description": "Untrained model", "reference": "full",
                       "arms": {"untrained": {"max_steps": 0}, "full": {}}},
}
# The planted PSNR of each spec arm.
PLANTED = {"clip": "clip", "dinov2": "full", "none": "none", "hf": "full", "untrained": "untrained", "full": "full"}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_dataset(root, videos=1, frames=2, size=64, benchmark_pairs=10, seed=0)
    return root / "benchmark"


BACKBONE_NAMES = {"real": ("ViT-B-32/openai", "facebook/dino-vits16"), "in-world": ("world-clip-i", "world-dino-i"),
                  "random": ("random-ViT-B-32-tiny", "random-dino-vits16-tiny")}
OPTION = {"real": "real", "in-world": "world", "random": "random"}


def _rows(arm: str, pair_ids: list[str], psnr: float, source: str, rng: np.random.Generator) -> pd.DataFrame:
    n = len(pair_ids) * len(SEEDS)
    noise = rng.normal(0.0, 0.1, n)
    return pd.DataFrame({
        "pair_id": np.repeat(pair_ids, len(SEEDS)),
        "seed": np.tile(SEEDS, len(pair_ids)),
        "arm": arm,
        "clip_i": 60.0 + psnr + noise,
        "dino_i": 30.0 + psnr + noise,
        "psnr_mask": psnr + noise,
        "ssim_mask": psnr / 40.0 + noise / 40.0,
        "diversity": 0.1 + noise / 100.0,
        "metric_source": source,
        "clip_backbone": BACKBONE_NAMES[source][0],
        "dino_backbone": BACKBONE_NAMES[source][1],
        "gen_seconds": 0.1,
        "metric_seconds": 0.01,
    })


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


def make_sweep(folder: Path, benchmark: Path, preset: str = "tiny", source: str = "random",
               planted: dict | None = None, notebooks: bool = True, wandb: bool = True,
               ablations: tuple[str, ...] = tuple(ABLATIONS), extra_parameters: dict | None = None) -> Path:
    """A finished sweep folder as `anydoor sweep` and the notebooks leave it."""
    psnr = dict(PSNR, **(planted or {}))
    parameters = {"preset": preset, "id_extractor": "dinov2", "detail_map": "hf", "max_steps": 20,
                  "train_seed": 0, "seeds": SEEDS, "num_inference_steps": 2, "guidance_scale": 5.0,
                  "metric_backbones": OPTION[source], **(extra_parameters or {})}
    folder.mkdir(parents=True)
    raw = {"name": "mini", "description": "test sweep", "benchmark": str(benchmark), "parameters": parameters,
           "ablations": {a: ABLATIONS[a] for a in ablations}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = SweepSpec.load(folder / "spec.yaml")
    runs = spec.expand()
    write_sweep_index(spec, runs, folder)
    pair_ids = [json.loads(line)["pair_id"] for line in (benchmark / "pairs.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    for n, run in enumerate(runs):
        run_dir = folder / "runs" / run.run_id
        planted_arm = PLANTED[run.members[0][1]]
        run_dir.mkdir(parents=True)
        rows = _rows(run.run_id, pair_ids, psnr[planted_arm], source, rng)
        rows.assign(train_seed=0).to_parquet(run_dir / "results.parquet")
        if run.params["max_steps"]:
            steps = np.arange(0, 20, 2)
            (run_dir / "checkpoint").mkdir()
            pd.DataFrame({"step": steps, "loss": 1.0 / (1 + steps + n)}).to_json(
                run_dir / "checkpoint" / "metrics.jsonl", orient="records", lines=True)
        for pair in pair_ids[:1]:
            _png(run_dir / "samples" / f"{pair}_seed0.png", 40 * n)
        (run_dir / "DONE").write_text(json.dumps({"finished": f"2025-01-0{n + 1}T00:00:00", "seconds": 1.0}))
    baselines = pd.concat([_rows(b, pair_ids, psnr[b], source, rng) for b in ("scene", "copy_paste")])
    (folder / "baselines").mkdir()
    baselines.to_parquet(folder / "baselines" / "results.parquet")
    _png(folder / "baselines" / "scene" / f"{pair_ids[0]}_seed0.png", 200)
    if notebooks:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# ID extractor, executed")])
        (folder / "notebooks").mkdir()
        nbformat.write(nb, folder / "notebooks" / "01_id_extractor.ipynb")
    if wandb:
        (folder / "runs" / runs[0].run_id / "wandb" / "offline-run-20250101_000000-abc").mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, benchmark):
    """`anydoor report` on the embedded default's sweep: (sweep, out, printed lines, exit code)."""
    sweep = make_sweep(tmp_path_factory.mktemp("tiny") / "sweep", benchmark)
    out = tmp_path_factory.mktemp("tiny_report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["report", str(sweep), "--out", str(out)])
    return sweep, out, printed.getvalue().splitlines(), code


def test_tiny_report_has_tables_cis_figures_links_and_the_banner(tiny_report):
    sweep, out, _, _ = tiny_report
    page, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    for text in (page, md):
        assert UNCALIBRATED_BANNER in text
        assert "embedded default (tiny models, synthetic data)" in text
        assert PLACEMENT[False] in text  # the sweep sets no shape_control: box placement, said in the header
        assert "random-ViT-B-32-tiny" in text
        assert "CLIP-sim (random-init)" in text  # never labelled CLIP-I
        assert "Calibration of the in-world backbones" in text  # the arms' frozen ID backbones are the world's
        assert "paper CLIP-I" not in text and "82.1" not in text  # not comparable to the tiny models
        assert "are not comparable to the embedded default" in text
        # Table rows: arms, reference rows and baselines, "mean [low, high]" cells.
        for arm in ("clip", "dinov2", "untrained", "scene", "copy_paste"):
            assert re.search(rf"{re.escape(arm)}\W.*?\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", text, re.S)
        # Paired differences with CIs and Holm p-values.
        assert "p (Holm)" in text and re.search(r"\[[+-]\d+\.\d{3}, [+-]\d+\.\d{3}\]", text)
    # The PSNR cell of the full method is the planted mean (20 +- noise/sqrt(n)).
    psnr_cell = re.search(r"\| dinov2 \| arm \| 20 \|(?:[^|]*\|){2} (\d+\.\d\d) \[", md)
    assert psnr_cell and abs(float(psnr_cell.group(1)) - 20.0) < 0.1
    # Sections in the spec's order (sweep.json sorts its keys).
    assert md.index("## id_extractor:") < md.index("## detail_map:") < md.index("## reference_rows:")
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    for ablation in ("id_extractor", "detail_map", "reference_rows"):
        for kind in ("metrics", "loss", "samples"):
            name = f"{ablation}_{kind}.png"
            assert name in figures
            assert PIL.Image.open(out / "figures" / name).size[0] > 100
            assert f'src="figures/{name}"' in page and f"(figures/{name})" in md
    # The executed notebook is rendered and linked; the missing one is named.
    assert (out / "notebooks" / "01_id_extractor.html").read_text().count("ID extractor, executed") >= 1
    assert 'href="notebooks/01_id_extractor.html"' in page and "(notebooks/01_id_extractor.html)" in md
    assert "No executed notebook for detail_map" in page
    # W&B: the offline folder and the command that publishes it.
    assert re.search(r"wandb sync runs/[0-9a-f]{10}/wandb/offline-run-20250101_000000-abc", md)
    assert "job_type = arm" in md


def test_real_weight_report_shows_the_papers_columns(tmp_path, benchmark):
    sweep = make_sweep(tmp_path / "sweep", benchmark, preset="base", source="real", notebooks=False, wandb=False,
                       ablations=("id_extractor", "detail_map"), extra_parameters={"shape_control": True})
    index = render_report(sweep, tmp_path / "report")
    assert index == tmp_path / "report" / "index.html"
    page, md = index.read_text(), (tmp_path / "report" / "report.md").read_text()
    assert UNCALIBRATED_BANNER not in page and UNCALIBRATED_BANNER not in md
    assert "real weights (base models)" in md and "CLIP-I" in md
    assert PLACEMENT[True] in md and PLACEMENT[False] not in md
    assert "paper CLIP-I" in page and "paper DINO-I" in md
    assert "Calibration of the in-world backbones" not in md  # real weights, real backbones
    rows = {cells[1].strip(): line for line in md.splitlines()
            if len(cells := line.split("|")) > 3 and cells[2].strip() in ("arm", "baseline", "reference row")}
    assert rows["dinov2"].rstrip(" |").endswith("82.1 | 67.8")  # Table 4, full method
    assert rows["clip"].rstrip(" |").endswith("73.8 | 31.5")  # Table 4, CLIP image encoder
    assert rows["none"].rstrip(" |").endswith("80.4 | 63.2")  # Table 5, all-zero map
    assert rows["scene"].rstrip().endswith("|  |  |")  # no paper numbers for a baseline
    assert "user study" in md
    assert "No offline W&B run folders" in md


def test_in_world_report_labels_and_shows_the_calibration(tmp_path, benchmark):
    from anydoor.world import load_manifest

    sweep = make_sweep(tmp_path / "sweep", benchmark, source="in-world", notebooks=False, wandb=False,
                       ablations=("id_extractor",))
    render_report(sweep, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert UNCALIBRATED_BANNER not in md
    assert "CLIP-I (in-world)" in md and "DINO-I (in-world)" in md and "| CLIP-I |" not in md
    assert "Calibration of the in-world backbones" in md and "random-init floor" in md
    top1 = load_manifest()["calibration"]["retrieval"]["dinov2"]["top1"]["mean"]
    assert f"{top1:.2f} [" in md  # the manifest's numbers, not recomputed
    assert "paper CLIP-I" not in md  # the paper's numbers are for real weights and backbones only


def _verdicts(text: str, ablation: str) -> dict[str, str]:
    """comparator -> verdict line of one ablation's block of the summary text."""
    block = re.search(rf"^{ablation} \(reference arm.*\n((?:  .*\n?)*)", text, re.M).group(1)
    return {m.group(1): m.group(2) for m in re.finditer(r"vs (\w+): (.*)", block)}


def test_summary_text_says_the_full_method_wins_only_when_it_does(tmp_path, benchmark):
    subset = dict(notebooks=False, wandb=False, ablations=("id_extractor", "reference_rows"))
    text = summary_text(make_sweep(tmp_path / "wins", benchmark, **subset))
    assert "best PSNR in mask: dinov2 20.0" in text
    verdicts = _verdicts(text, "id_extractor")
    assert set(verdicts) == {"untrained", "scene", "copy_paste"}
    for verdict in verdicts.values():
        assert verdict.startswith("PSNR beats (+") and "; SSIM beats (+" in verdict
    planted_gap = float(re.match(r"PSNR beats \(\+(\d+\.\d+)", verdicts["untrained"]).group(1))
    assert abs(planted_gap - 12.0) < 0.1  # 20 - 8 dB, planted

    # The untrained model and the scene planted equal to the full method: no win claimed.
    equal = summary_text(make_sweep(tmp_path / "equal", benchmark, planted={"untrained": 20.0, "scene": 20.0}, **subset))
    verdicts = _verdicts(equal, "id_extractor")
    assert "beats" not in verdicts["untrained"] and "beats" not in verdicts["scene"]
    assert verdicts["untrained"].count("no significant difference") == 2
    assert "PSNR beats" in verdicts["copy_paste"]


def test_cli_report_prints_the_index_and_the_summary(tiny_report, tmp_path, capsys):
    _, out, printed, code = tiny_report
    assert code == 0
    assert printed[0] == str(out / "index.html")
    assert printed[1] == ("sweep mini: embedded default (tiny models, synthetic data); "
                          "random-init metric backbones (similarities, not CLIP-I / DINO-I)")
    # Then the headline, as the report's Headline section has it.
    assert printed[2].startswith("Learning bar (") and printed[2] in (out / "report.md").read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "sweep_dir" in capsys.readouterr().err


def test_render_report_rejects_bad_arguments(tiny_report):
    sweep, out, _, _ = tiny_report
    with pytest.raises(TypeError, match="sweep_dir must be a path"):
        render_report(3)
    with pytest.raises(TypeError, match="out_dir must be a path"):
        render_report(sweep, out_dir=5)


def test_markdown_table_by_hand():
    frame = pd.DataFrame({"a": [1.5, np.nan], "b|c": ["x|y", None]}, index=pd.Index(["r1", "r2"], name="arm"))
    assert markdown_table(frame) == (
        "| arm | a | b\\|c |\n"
        "|---|---|---|\n"
        "| r1 | 1.5 | x\\|y |\n"
        "| r2 |  |  |"
    )
    assert markdown_table(frame, index=False).splitlines()[0] == "| a | b\\|c |"
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame"):
        markdown_table([[1]])


def test_paper_numbers_cover_every_demo_arm():
    spec = SweepSpec.load(ROOT / "sweeps" / "demo.yaml")
    for name, ablation in spec.ablations.items():
        if "paper_table" in ablation:
            assert set(PAPER_TABLES[ablation["paper_table"]].arms) == set(ablation["arms"]), name
    assert paper_scores("table4", "dinov2") == (82.1, 67.8)
    assert paper_scores("table5", "rgb") == (82.2, 68.8)
    assert paper_scores("table3", "+hf-map") == (81.5, 64.8)
    assert paper_scores("table3", "+ats") == paper_scores("table4", "dinov2") == paper_scores("table5", "hf")
    assert paper_scores("table4", "scene") is None
    with pytest.raises(ValueError, match="paper_table='table9'"):
        paper_scores("table9", "hf")


def test_demo_spec_expands_to_the_unique_runs():
    spec = SweepSpec.load(ROOT / "sweeps" / "demo.yaml")
    runs = spec.expand()
    assert len(runs) == 15
    assert len({r.run_id for r in runs}) == 15
    members = {r.run_id: set(r.members) for r in runs}
    # The wrong-reference control is evaluation only: it shares the full method's trained model.
    from eval.arm import trained_model_key

    by_member = {m: r for r in runs for m in r.members}
    wrong, full_run = by_member[("reference_rows", "wrong-reference")], by_member[("reference_rows", "full")]
    assert wrong.params["wrong_reference"] and not full_run.params["wrong_reference"]
    assert trained_model_key(wrong.params) == trained_model_key(full_run.params)
    full = {("id_extractor", "dinov2"), ("detail_map", "hf"), ("timestep_sampling", "ats"),
            ("components", "+ats"), ("reference_rows", "full")}
    assert full in members.values()
    # Components' "+hf-map" (uniform timesteps) is the timestep ablation's uniform arm.
    assert {("timestep_sampling", "uniform"), ("components", "+hf-map")} in members.values()
    assert sum(len(m) for m in members.values()) == sum(len(a["arms"]) for a in spec.ablations.values())
    assert [len(r.members) for r in runs].count(1) == 13
    # AnyDoor-world is evaluation only: the shipped pipeline folder, no training of its own.
    long_trained = by_member[("reference_rows", "anydoor-world")]
    assert long_trained.params["checkpoint"] == "anydoor/world/anydoor_world"
    assert sum(bool(r.params["checkpoint"]) for r in runs) == 1
    # The arms are compared without guidance; the full method's model is evaluated at the
    # released guidance and with wrong references too, sharing its trained model: 11 trainings for 14 runs.
    guidance = {r.members[0]: r.params["guidance_scale"] for r in runs}
    assert guidance[("reference_rows", "full-guidance-5")] == 5.0
    assert set(guidance.values()) == {1.0, 5.0} and list(guidance.values()).count(5.0) == 1
    assert sum(r.params["max_steps"] == 0 for r in runs) == 1


def test_demo_reuses_current_ablation_notebooks_and_redoes_stale_or_failed_ones(tmp_path, monkeypatch):
    import os

    import eval.demo as demo

    calls = []

    def fake_papermill(cmd):
        out = Path(cmd[cmd.index("-m") + 3])
        out.write_text("{}")
        calls.append(out.name)
        return 1 if out.name == "03_timestep_sampling.ipynb" else 0

    monkeypatch.setattr(demo.subprocess, "call", fake_papermill)
    spec, sweep = tmp_path / "demo.yaml", tmp_path / "sweep"
    spec.write_text("name: demo\n")
    (sweep / "runs" / "abc").mkdir(parents=True)
    (sweep / "runs" / "abc" / "DONE").write_text("")
    os.utime(spec, (1, 1))
    os.utime(sweep / "runs" / "abc" / "DONE", (1, 1))
    written = demo.execute_ablation_notebooks(spec, sweep, ROOT)
    assert [p.name for p in written] == list(demo.ABLATION_NOTEBOOKS.values()) == calls
    calls.clear()
    demo.execute_ablation_notebooks(spec, sweep, ROOT)
    assert calls == ["03_timestep_sampling.ipynb"]  # the failed one is kept but stale
    calls.clear()
    (sweep / "runs" / "abc" / "DONE").touch()  # a run finished after the notebooks: all stale
    demo.execute_ablation_notebooks(spec, sweep, ROOT)
    assert len(calls) == 4


def test_unfinished_runs_are_listed_not_fatal(tmp_path, benchmark):
    sweep = make_sweep(tmp_path / "sweep", benchmark, notebooks=False, wandb=False, ablations=("id_extractor",))
    index = json.loads((sweep / "sweep.json").read_text())
    (sweep / "runs" / index["ablations"]["id_extractor"]["arms"]["dinov2"][0] / "DONE").unlink()
    md = (render_report(sweep, tmp_path / "report").parent / "report.md").read_text()
    assert "Missing (not finished): dinov2." in md
    assert "The reference arm 'dinov2' has not finished: no paired differences." in md
    assert "| clip | arm | 20 |" in md and "Paired differences" not in md
    assert "1 of 2 done" in md


def test_every_reference_row_not_run_by_an_ablation_stands_beside_it(tmp_path, benchmark):
    """The reference rows' own reference (here the full method without guidance, a run of its
    own) is shown beside every ablation like the untrained model; the full method at the
    released guidance is each ablation's own reference run and is not repeated."""
    from eval.ablation import load_ablation

    rows = {"description": "Does the full method learn?", "reference": "full-guidance-1",
            "arms": {"untrained": {"max_steps": 0}, "full-guidance-1": {"guidance_scale": 1.0}, "full": {}}}
    PLANTED["full-guidance-1"] = "full"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(ABLATIONS, "reference_rows", rows)
            sweep = make_sweep(tmp_path / "sweep", benchmark, notebooks=False, wandb=False)
    finally:
        del PLANTED["full-guidance-1"]
    detail = load_ablation(sweep, "detail_map")
    assert sorted(detail.reference_arms) == ["full-guidance-1", "untrained"]
    assert set(detail.results["arm"]) == {"none", "hf", "untrained", "full-guidance-1", "scene", "copy_paste"}
    assert load_ablation(sweep, "reference_rows").reference_arms == []
    assert "full-guidance-1 vs untrained: PSNR beats" in summary_text(sweep)


def _headline_sweep(folder: Path, benchmark: Path, monkeypatch, planted: dict) -> Path:
    rows = {"description": "Reference rows", "reference": "full",
            "arms": {"untrained": {"max_steps": 0}, "wrong-reference": {"wrong_reference": True}, "full": {}}}
    monkeypatch.setitem(ABLATIONS, "reference_rows", rows)
    monkeypatch.setitem(PLANTED, "wrong-reference", "wrong")
    return make_sweep(folder, benchmark, planted=planted, notebooks=False, wandb=False,
                      extra_parameters={"wrong_reference": False})


def test_headline_and_summary_table_say_what_the_run_supports(tmp_path, benchmark, monkeypatch):
    # The full method (20) beats the untrained model (8), the scene (10) and the wrong-reference control (12);
    # the clip arm is planted level with it (20), the detail map's "none" below it (18).
    sweep = _headline_sweep(tmp_path / "sweep", benchmark, monkeypatch, {"wrong": 12.0, "clip": 20.0})
    out = tmp_path / "report"
    render_report(sweep, out)
    page, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    assert page.index("Headline") < page.index("Summary") < page.index("id_extractor:")
    assert re.search(r"Learning bar \(full beats untrained and scene on DINO-I, CLIP-I and PSNR in the mask, "
                     r"Holm-significant\): MET\. vs untrained on DINO-sim \(random-init\): met: \+1[12]\.\d\d", md)
    assert re.search(r"The model uses its reference \(full beats wrong-reference\): MET\. vs wrong-reference on "
                     r"DINO-sim \(random-init\): met: \+[78]\.\d\d", md)
    assert re.search(r"id_extractor \(reference dinov2\): clip: no difference detected; could not detect less than "
                     r"CLIP-sim \(random-init\) 0\.\d+", md)
    assert re.search(r"detail_map \(reference hf\): none: CLIP-sim \(random-init\): hf better \(\+[12]\.\d\d", md)
    # The summary is a table, one row per comparison and metric, with its MDE and verdict.
    assert "| ablation | comparison | metric | difference [95% CI] | p_holm | MDE | verdict |" in md
    assert re.search(r"\| id_extractor \| dinov2 - clip \| PSNR in target mask \(dB\) \| [+-]0\.0\d\d \[[+-]0\.\d{3}, [+-]0\.\d{3}\] "
                     r"\| [\d.]+ \| 0\.\d+ \| no detectable difference \|", md)
    assert re.search(r"\| reference_rows \| full - wrong-reference \| DINO-sim \(random-init\) \| \+[78]\.\d\d .*\| "
                     r"full better \|", md)
    assert "<pre>" not in page.split("Summary")[1].split("id_extractor:")[0]  # a table, not preformatted text


def test_headline_reads_not_met_with_the_difference_and_mde(tmp_path, benchmark, monkeypatch):
    # An untrained model as good as the full method: the learning bar is not met, and says by how much.
    sweep = _headline_sweep(tmp_path / "sweep", benchmark, monkeypatch, {"wrong": 20.0, "untrained": 20.0})
    text = summary_text(sweep)
    assert re.search(r"Learning bar .*: NOT MET\. vs untrained on DINO-sim \(random-init\): not met: [+-]0\.\d{3} "
                     r"\[[+-]0\.\d{3}, [+-]0\.\d{3}\], MDE 0\.\d+", text)
    assert "The model uses its reference (full beats wrong-reference): NOT MET." in text


def test_report_shows_the_fidelity_ladder_and_the_gap_closed(tmp_path, benchmark):
    # A tiny-preset sweep on the shipped world VAE: the report computes the ladder (cached in the sweep)
    # and a G (DINO-I) column; without a VAE it says why there is none.
    sweep = make_sweep(tmp_path / "sweep", benchmark, notebooks=False, wandb=False, extra_parameters={"vae": "world"})
    render_report(sweep, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Fidelity ladder: where identity is lost before any model" in md
    assert re.search(r"\| VAE, perfect latents \| -?\d+\.\d\d \[", md)
    assert "| G (DINO-I) |" in md and re.search(r"\| untrained \| reference row \|.*\| 0\.00 \[0\.00, 0\.00\] \|", md)
    assert re.search(r"> Identity gap closed \(G on DINO-I.*\): full -?\d+\.\d\d \[", md)
    assert (sweep / "ladder" / "results.parquet").is_file() and (sweep / "ladder" / "key.json").is_file()
    bare = make_sweep(tmp_path / "bare", benchmark, notebooks=False, wandb=False)
    render_report(bare, tmp_path / "bare_out")
    assert "no fidelity ladder: the benchmark is missing or the sweep's VAE is untrained" in (
        tmp_path / "bare_out" / "report.md").read_text()


def test_demo_long_is_the_demo_with_ten_times_the_training():
    demo, long = (SweepSpec.load(ROOT / "sweeps" / f"{name}.yaml") for name in ("demo", "demo-long"))
    assert (long.name, long.parameters["max_steps"]) == ("demo-long", 10 * demo.parameters["max_steps"])
    assert long.parameters["pair_pool"] == 10 * demo.parameters["pair_pool"]  # each pair read as often
    assert {k: v for k, v in long.parameters.items() if k not in ("max_steps", "pair_pool")} == {
        k: v for k, v in demo.parameters.items() if k not in ("max_steps", "pair_pool")}
    assert long.ablations == demo.ablations and long.benchmark == demo.benchmark
    assert len(long.expand()) == len(demo.expand())


def test_demo_data_is_reused_or_rewritten_when_its_settings_change(tmp_path, monkeypatch):
    import json

    import eval.demo as demo

    monkeypatch.setattr(demo, "SYNTH_SETTINGS", dict(videos=1, frames=2, size=64, benchmark_pairs=2, seed=0))
    folder = demo.ensure_synthetic_data(tmp_path / "synthetic")
    assert len((folder / "benchmark" / "pairs.jsonl").read_text().splitlines()) == 2
    first = (folder / "benchmark" / "pairs.jsonl").read_text().splitlines()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert demo.ensure_synthetic_data(folder) == folder and (folder / "manifest.json").stat().st_mtime_ns == stamp
    # More benchmark pairs: rewritten, the earlier pairs unchanged (the benchmark's seeds are per pair).
    monkeypatch.setattr(demo, "SYNTH_SETTINGS", dict(videos=1, frames=2, size=64, benchmark_pairs=3, seed=0))
    demo.ensure_synthetic_data(folder)
    lines = (folder / "benchmark" / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines[:2] == first
    assert json.loads((folder / demo.SETTINGS_FILE).read_text())["benchmark_pairs"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no temporary folders left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no complete synthetic data set"):
        demo.ensure_synthetic_data(tmp_path / "other")
