"""The page's sections: one function each, returning the data its macro in ``report_template.html`` renders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.report.config import ReportConfig
from imagenet_plus.report.inputs import (
    DIAG_CLASS_ID,
    DIAG_VERDICT,
    DIAGNOSIS_COLUMNS,
    HEADLINE,
    VERDICT_ORDER,
    ReportInputs,
    saved_centroids,
    worst_classes,
)
from imagenet_plus.report.plots import plot_centroid_map, plot_class_map, plot_groups, plot_per_class, plot_scores
from imagenet_plus.report.scan import (
    Histograms,
    ScoreScan,
    SelectionLookup,
    class_centroids,
    scan_histograms,
    scan_scores,
)
from imagenet_plus.report.sheets import (
    SHEETS_DIR,
    draw_sheet,
    lowest_ranked,
    pick_sheet_keys,
    read_images,
    real_images,
    wanted_images,
)
from imagenet_plus.report.tables import TABLE_COLUMNS, group_table, per_class_table, sample_classes
from imagenet_plus.select.config import non_default_thresholds

#: The per-class table's file in the report folder (every class; the page shows the first rows).
PER_CLASS_CSV = "per_class.csv"
#: Rows of the per-class HTML table (per_class.csv always has every class).
MAX_TABLE_ROWS = 1000
#: Rows of the worst-first diagnosis table.
MAX_DIAGNOSIS_ROWS = 200


@dataclass(frozen=True)
class Section:
    """One section of the page: the template macro (``kind``), its anchor, title and data."""

    kind: str
    anchor: str
    title: str
    data: dict[str, Any]


def headline_section(inputs: ReportInputs) -> Section:
    """Headline metrics of summary.json, the selection's totals, the generator and scorer models."""
    scores, gen, selection = inputs.scores, inputs.generate, inputs.selection
    rows = [[HEADLINE[k], v] for k, v in scores.headline.items()]
    rows.append(["classes", len(inputs.classes)])
    if selection is not None:
        rows += [
            ["images kept", selection.num_kept],
            ["per-class quota", selection.per_class_quota],
            ["classes short of quota", len(selection.short or {})],
            ["dropped classes", selection.dropped_classes or []],
        ]
    setup = [
        ["generator", gen.get("model")],
        ["steps / guidance / resolution", f"{gen.get('steps')} / {gen.get('guidance')} / {gen.get('resolution')}"],
        ["prompt strategies", gen.get("prompt_strategy")],
        ["class set", gen.get("classes")],
        ["seed", gen.get("seed")],
    ] + [[f"scorer: {k}", v] for k, v in sorted(scores.models.items())]
    setup += [["reference (real images)", scores.reference]]
    notes = []
    if scores.reference in (None, "", {}):
        notes.append("No real reference was given to 'score': FID, KID, precision, recall and realism are absent.")
    return Section("headline", "headline", "Headline metrics", {"rows": rows, "setup": setup, "notes": notes})


def scores_section(inputs: ReportInputs, hist: Histograms, out: Path) -> Section:
    """Score histograms (kept vs not kept) with the thresholds, and why images were not kept."""
    selection = inputs.selection
    thresholds = selection.thresholds if selection is not None else {}
    image = plot_scores(hist, thresholds or {}, out / "scores.png")
    notes, used, reasons = [], None, []
    if selection is None:
        notes.append("No selection yet (run 'imagenet-plus select'): histograms show all images, no thresholds.")
    else:
        used = ", ".join(f"{k}: {v}" for k, v in non_default_thresholds(thresholds)) or "none"
        reasons = [[k, v] for k, v in sorted((selection.reasons or {}).items(), key=lambda kv: -kv[1])]
    return Section("scores", "scores", "Score distributions",
                   {"image": image, "notes": notes, "thresholds": used, "reasons": reasons})


def per_class_section(table: Any, out: Path) -> Section:
    """Per-class rates (plot), the table (first rows) and per_class.csv (every class)."""
    image = plot_per_class(table, out / "per_class.png")
    show = [c for c in TABLE_COLUMNS if c in table.columns]
    with atomic_file(out / PER_CLASS_CSV, "w") as f:
        table[show].to_csv(f, index=False)
    notes = []
    if "top1_rate" in table.columns and table["top1_rate"].isna().all():
        notes.append("No classifier hits: the classifier did not score these classes (outside ImageNet-1k or none).")
    after = []
    if len(table) > MAX_TABLE_ROWS:
        after.append(f"The table shows the first {MAX_TABLE_ROWS} of {len(table)} classes; {PER_CLASS_CSV} has all.")
    return Section("per_class", "per-class", "Per class",
                   {"image": image, "notes": notes, "csv": PER_CLASS_CSV, "header": show,
                    "rows": table[show].head(MAX_TABLE_ROWS).values.tolist(), "after": after})


def groups_section(table: Any, out: Path) -> Section:
    """Mean per-class rates by WordNet group (plot and table)."""
    groups = group_table(table)
    image = plot_groups(groups, out / "groups.png")
    notes = ["Groups are WordNet lexicographer files (noun.animal → animal); custom classes form 'custom'."]
    return Section("groups", "groups", "Rates by WordNet group",
                   {"image": image, "header": list(groups.columns), "rows": groups.values.tolist(), "notes": notes})


def class_map_section(inputs: ReportInputs, table: Any, out: Path) -> Section:
    """PCA map of the class text embeddings, or a note when ``score`` did not write them."""
    if inputs.text_embeddings is None:
        note = f"{inputs.paths.class_text_embeddings.name} is missing (written by 'score'): no class map."
        return Section("class_map", "class-map", "Class map", {"image": None, "notes": [note]})
    image = plot_class_map(inputs.text_embeddings, table, out / "class_map.png")
    return Section("class_map", "class-map", "Class map", {"image": image, "notes": []})


def diagnosis_sheets(inputs: ReportInputs, rows: Any, worst: list[str], cfg: ReportConfig, names: dict[str, Any],
                     out: Path) -> list[dict[str, str]]:
    """One sheet per worst class: its lowest-ranked synthetic images, beside real ones when a reference is known."""
    reference = inputs.diagnosis_notes.reference
    picks = {cid: lowest_ranked(rows, cid, cfg.sheet_images) for cid in worst}
    images = read_images(inputs.paths, wanted_images([([], low) for low, _ in picks.values()]))
    sheets = []
    for cid in worst:
        low, col = picks[cid]
        real = real_images(reference, cid, cfg.sheet_images)
        images.update(dict(real))
        sheet_rows = [("synthetic", low)] + ([("real", [(k, "", float("nan")) for k, _ in real])] if real else [])
        src = f"{SHEETS_DIR}/diagnosis-{cid}.jpg"
        draw_sheet(sheet_rows, images, cfg.sheet_images, cfg.thumb_size, f"{names.get(cid, cid)} ({cid})", out / src)
        caption = f"lowest {col} synthetic images" + (", real images below" if real else " (no real reference)")
        sheets.append({"name": str(names.get(cid, cid)), "class_id": cid, "src": src, "caption": caption})
    return sheets


def diagnosis_section(inputs: ReportInputs, table: Any, rows: Any, worst: list[str], cfg: ReportConfig,
                      out: Path) -> Section:
    """Why classes fail (``RUN/diagnosis.parquet``), or a note when ``diagnose`` has not run."""
    empty = {"counts": [], "rows": [], "header": [], "image": None, "sheets": [], "notes": []}
    diagnosis = inputs.diagnosis
    if diagnosis is None:
        note = "No diagnosis (run 'imagenet-plus diagnose' after 'score'): why classes fail is not shown."
        return Section("diagnosis", "diagnosis", "Diagnosis", {**empty, "notes": [note]})
    counts = [[v, int((diagnosis[DIAG_VERDICT] == v).sum())] for v in VERDICT_ORDER]
    header = [c for c in DIAGNOSIS_COLUMNS if c in diagnosis.columns]
    notes = []
    if len(diagnosis) > MAX_DIAGNOSIS_ROWS:
        notes.append(f"The table shows the {MAX_DIAGNOSIS_ROWS} worst of {len(diagnosis)} classes; "
                     f"{inputs.paths.diagnosis_parquet.name} has all.")
    note = inputs.diagnosis_notes.note
    if note:
        notes.append(str(note))
    class_ids = list(diagnosis[DIAG_CLASS_ID])
    saved = saved_centroids(inputs.paths, class_ids)
    if saved is not None:
        centroids, real = saved
        why = None
    else:  # diagnosed before the centroids were saved: the synthetic ones, streamed from the .clip.npy files
        (centroids, why), real = class_centroids(inputs.paths, class_ids), None
    image = plot_centroid_map(centroids, diagnosis, out / "diagnosis_map.png", real) if centroids is not None else None
    if image is None:
        notes.append(f"No centroid map: {why}.")
    elif real is not None:
        notes.append("The map shows synthetic (dots) and real (crosses) class centroids in one PCA of CLIP image "
                     "embeddings; a thin line joins each class's pair, and an arrow leads from a flagged class to "
                     "the real centroid it sits nearer to.")
    else:
        notes.append("Real class centroids are not on the map (diagnose ran without a reference, or before it saved "
                     f"{inputs.paths.diagnosis_centroids.name}): arrows lead to the class a synthetic centroid is "
                     "nearest to, and the table gives the synthetic-vs-real centroid cosine where known.")
    names = dict(zip(table["class_id"], table["name"], strict=True))
    sheets = diagnosis_sheets(inputs, rows, worst, cfg, names, out)
    return Section("diagnosis", "diagnosis", "Diagnosis: why classes fail (worst first)",
                   {"counts": counts, "header": header, "image": image, "sheets": sheets, "notes": notes,
                    "rows": diagnosis[header].head(MAX_DIAGNOSIS_ROWS).values.tolist()})


def sheets_section(inputs: ReportInputs, table: Any, rows: Any, chosen: list[str], cfg: ReportConfig,
                   out: Path) -> Section:
    """Contact sheets of the sampled classes: best kept and worst rejected images with their scores."""
    picks = {cid: pick_sheet_keys(rows, cid, cfg.sheet_images) for cid in chosen}
    wanted = wanted_images([(b, w) for b, w, _ in picks.values()])
    images = read_images(inputs.paths, wanted)
    names = dict(zip(table["class_id"], table["name"], strict=True))
    labels = ("best kept", "worst rejected") if inputs.selection is not None else ("best", "worst")
    sheets = []
    for cid in chosen:
        best, worst, col = picks[cid]
        src = f"{SHEETS_DIR}/{cid}.jpg"
        draw_sheet([(labels[0], best), (labels[1], worst)], images, cfg.sheet_images, cfg.thumb_size,
                   f"{names[cid]} ({cid}), ranked by {col}", out / src)
        sheets.append({"name": str(names[cid]), "class_id": cid, "src": src,
                       "caption": f"top row: {labels[0]}, bottom row: {labels[1]}, ranked by {col}"})
    notes = [] if sheets else ["No class has images."]
    if missing := sum(len(k) for k in wanted.values()) - len(images):
        notes.append(f"{missing} image(s) could not be found in {inputs.paths.generated} (red frames).")
    return Section("sheets", "sheets", f"Contact sheets ({len(chosen)} of {len(table)} classes)",
                   {"sheets": sheets, "notes": notes})


def build_sections(inputs: ReportInputs, cfg: ReportConfig, lookup: SelectionLookup | None,
                   out: Path) -> tuple[list[Section], ScoreScan, list[str]]:
    """Stream the shards (two passes) and build every section's plots and data into ``out``."""
    scan = scan_scores(inputs.paths, inputs.classes, lookup)
    table = per_class_table(scan, inputs.classes, inputs.scores.per_class, lookup is not None)
    chosen = sample_classes(table, cfg.sample_classes, cfg.seed)
    worst = worst_classes(inputs.diagnosis)
    hist, rows = scan_histograms(inputs.paths, scan, lookup, chosen + worst)
    sections = [
        headline_section(inputs),
        scores_section(inputs, hist, out),
        per_class_section(table, out),
        groups_section(table, out),
        class_map_section(inputs, table, out),
        diagnosis_section(inputs, table, rows, worst, cfg, out),
        sheets_section(inputs, table, rows, chosen, cfg, out),
    ]
    return sections, scan, chosen
