"""The AnyDoor paper's ablation numbers (DESIGN.md section 1b), as data.

CLIP-score / DINO-score (x100) from the arXiv v1 tables, measured on the
paper's DreamBooth-subjects x COCO-scenes benchmark (2,400 composites). A
report shows them beside ours only for sweeps with real weights scored with
the real metric backbones: the embedded default's tiny models and its
in-world or random backbones measure something else.

Each table maps the arm names of our sweep specs (`sweeps/demo.yaml`) to
the paper's rows; arms without a paper row (baselines, reference rows) have
no paper numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTable:
    """One ablation table of the paper.

    rows: the paper's row label -> (CLIP, DINO) x100, in the paper's order.
    arms: our arm name -> the paper's row label.
    """

    key: str
    title: str
    rows: dict[str, tuple[float, float]]
    arms: dict[str, str]


PAPER_TABLES: dict[str, PaperTable] = {
    "table3": PaperTable(
        key="table3",
        title="Table 3: core components added one by one",
        rows={
            "CLIP baseline": (73.8, 31.5),
            "+ DINOv2 with segmentation": (80.4, 63.2),
            "+ high-frequency map": (81.5, 64.8),
            "+ adaptive timestep sampling": (82.1, 67.8),
        },
        arms={
            "clip-baseline": "CLIP baseline",
            "+dinov2-segmentation": "+ DINOv2 with segmentation",
            "+hf-map": "+ high-frequency map",
            "+ats": "+ adaptive timestep sampling",
        },
    ),
    "table4": PaperTable(
        key="table4",
        title="Table 4: ID extractor",
        rows={
            "VGG features": (71.7, 27.7),
            "CLIP image encoder": (73.8, 31.5),
            "DINOv2, global token only": (73.1, 35.4),
            "DINOv2, global + patch tokens": (81.0, 64.1),
            "DINOv2, global + patch, background removed": (82.1, 67.8),
        },
        arms={
            "clip": "CLIP image encoder",
            "dinov2-global": "DINOv2, global token only",
            "dinov2-with-background": "DINOv2, global + patch tokens",
            "dinov2": "DINOv2, global + patch, background removed",
        },
    ),
    "table5": PaperTable(
        key="table5",
        title="Table 5: detail map pasted into the collage",
        rows={
            "none (all-zero map in the box)": (80.4, 63.2),
            "original object image": (82.2, 68.8),
            "noise image": (81.6, 68.1),
            "patch-shuffled object": (82.0, 66.9),
            "high-frequency map": (82.1, 67.8),
        },
        arms={
            "none": "none (all-zero map in the box)",
            "rgb": "original object image",
            "noise": "noise image",
            "shuffle": "patch-shuffled object",
            "hf": "high-frequency map",
        },
    ),
}

# Table 2, 1-4 scale: (quality, fidelity, diversity). A user study, not
# something a sweep measures: reports quote it as a note.
USER_STUDY: dict[str, tuple[float, float, float]] = {
    "Paint-by-Example": (2.71, 2.10, 3.04),
    "Graphit": (2.65, 2.11, 2.84),
    "AnyDoor": (3.04, 3.06, 2.88),
}


def paper_table(key: str) -> PaperTable:
    if key not in PAPER_TABLES:
        raise ValueError(f"paper_table={key!r} is not one of the paper's ablation tables {sorted(PAPER_TABLES)}")
    return PAPER_TABLES[key]


def paper_scores(key: str, arm: str) -> tuple[float, float] | None:
    """(CLIP, DINO) x100 of the paper's row for our `arm` in table `key`;
    None for an arm the paper's table has no row for."""
    table = paper_table(key)
    label = table.arms.get(arm)
    return None if label is None else table.rows[label]


def user_study_note() -> str:
    scores = "; ".join(f"{name} {q:.2f} / {f:.2f} / {d:.2f}" for name, (q, f, d) in USER_STUDY.items())
    return f"The paper's user study (Table 2, 1-4 scale, quality / fidelity / diversity): {scores}."
