"""Contact sheets: the best kept and worst rejected images of a class (or its lowest-ranked ones), with scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_plus.contract import (
    COL_CLIP_CLASS_SCORE,
    COL_CLIP_SCORE,
    COMPOSITE,
    READ_IMAGE_EXTENSIONS,
    RunPaths,
    expected_count,
    image_member,
)
from imagenet_plus.io.atomic import atomic_file
from imagenet_plus.io.tar import iter_shard
from imagenet_plus.pipeline.progress import progress_bar

#: Folder of the sheets inside the report folder.
SHEETS_DIR = "sheets"
#: A thumbnail of a sheet: (key, shard stem, score).
SheetEntry = tuple[str, str, float]


def rank_column(rows: Any) -> str:
    """The column images are ranked by: the selection's composite, else ``clip_class_score``, else ``clip_score``."""
    for col in (COMPOSITE, COL_CLIP_CLASS_SCORE):
        if col in rows.columns and rows[col].notna().any():
            return col
    return COL_CLIP_SCORE


def lowest_ranked(df: Any, class_id: str, n: int) -> tuple[list[SheetEntry], str]:
    """The ``n`` lowest-ranked images of a class, kept or not (ties broken by key), and the ranking column."""
    c = df[df["class_id"] == class_id]
    col = rank_column(c)
    low = c.sort_values([col, "key"], ascending=[True, True], na_position="first")[:n]
    return [(k, s, float(v)) for k, s, v in zip(low["key"], low["_shard"], low[col], strict=True)], col


def pick_sheet_keys(df: Any, class_id: str, n: int) -> tuple[list[SheetEntry], list[SheetEntry], str]:
    """(best kept, worst rejected, ranking column) of one class; entries are (key, shard, score).

    Ranked by the selection's composite when there is one, else by ``clip_class_score`` (or ``clip_score``);
    without a selection the "rejected" row is simply the lowest-ranked images.
    """
    c = df[df["class_id"] == class_id]
    col = rank_column(c)
    if "kept" in c.columns:
        kept = c["kept"].to_numpy(bool)
        good, bad = c[kept], c[~kept]
    else:
        good, bad = c, c
    # Ties are broken by key, so the sheet does not depend on row order.
    good = good.sort_values([col, "key"], ascending=[False, True], na_position="last")[:n]
    bad = bad.sort_values([col, "key"], ascending=[True, True], na_position="first")[:n]
    best = [(k, s, float(v)) for k, s, v in zip(good["key"], good["_shard"], good[col], strict=True)]
    worst = [(k, s, float(v)) for k, s, v in zip(bad["key"], bad["_shard"], bad[col], strict=True)]
    if "kept" not in c.columns:
        best_keys = {k for k, _, _ in best}
        worst = [w for w in worst if w[0] not in best_keys]
    return best, worst, col


def read_images(paths: RunPaths, wanted: dict[str, set[str]]) -> dict[str, bytes]:
    """Image bytes of the wanted keys, ``{shard stem: {keys}}``, read through :func:`~imagenet_plus.io.tar.iter_shard`.

    A sample's image is its member with one of the contract's image extensions (``contract.image_member``).

    Raises:
        CorruptShard: a shard without stats, unreadable, or holding another number of samples than its stats say.
    """
    out: dict[str, bytes] = {}
    bar = progress_bar(len(wanted), "report: contact sheets", unit="shard")
    for shard, keys in sorted(wanted.items()):
        bar.update(1)
        tar = paths.generated_tar(int(shard)) if shard.isdigit() else None
        if tar is None or not tar.is_file():
            continue
        for sample in iter_shard(tar, expected_count(tar)):
            if sample["__key__"] in keys:
                member = image_member(sample)
                if member is not None:
                    out[sample["__key__"]] = sample[member]
    bar.close()
    return out


def wanted_images(picks: list[tuple[list[SheetEntry], list[SheetEntry]]]) -> dict[str, set[str]]:
    """``{shard stem: {keys}}`` of every image on the given sheets."""
    wanted: dict[str, set[str]] = {}
    for best, worst in picks:
        for key, shard, _score in best + worst:
            wanted.setdefault(shard, set()).add(key)
    return wanted


def draw_sheet(rows: list[tuple[str, list[SheetEntry]]], images: dict[str, bytes], n: int, thumb: int,
               title: str, path: Path) -> None:
    """Compose a contact sheet with PIL: one labelled row of thumbnails (with scores) per entry of ``rows``."""
    import io

    from PIL import Image, ImageDraw, ImageOps

    pad, label_w, caption = 4, 92, 14
    width = label_w + n * (thumb + pad) + pad
    height = 20 + len(rows) * (thumb + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill=(0, 0, 0))
    for r, (row_label, entries) in enumerate(rows):
        y = 20 + r * (thumb + caption + pad)
        draw.text((pad, y + thumb // 2 - 6), row_label, fill=(60, 60, 60))
        if not entries:
            draw.text((label_w, y + thumb // 2 - 6), "(none)", fill=(120, 120, 120))
        for i, (key, _shard, score) in enumerate(entries):
            x = label_w + i * (thumb + pad)
            data = images.get(key)
            if data is None:
                draw.rectangle((x, y, x + thumb, y + thumb), outline=(200, 0, 0))
                continue
            try:
                img = Image.open(io.BytesIO(data)).convert("RGB")
            except OSError:
                draw.rectangle((x, y, x + thumb, y + thumb), outline=(200, 0, 0))
                continue
            img = ImageOps.contain(img, (thumb, thumb))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            if score == score:  # no caption for NaN (real images have no score)
                draw.text((x, y + thumb + 1), f"{score:.3g}", fill=(0, 0, 0))
    with atomic_file(path) as f:
        sheet.save(f, format="JPEG", quality=88)



def real_images(reference: str | None, class_id: str, n: int) -> list[tuple[str, bytes]]:
    """Up to ``n`` real images of a class from a reference folder (``REF/{class_id}/*``, sorted), or none.

    Images are the files with one of the contract's :data:`~imagenet_plus.contract.READ_IMAGE_EXTENSIONS`.
    """
    if not reference:
        return []
    folder = Path(reference) / class_id
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in READ_IMAGE_EXTENSIONS)[:n]
    return [(f"real:{p.name}", p.read_bytes()) for p in files]
