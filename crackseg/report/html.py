"""``report.html``: one self-contained page (inline CSS, thumbnails as base64 JPEG) that opens offline."""

from __future__ import annotations

import base64
import html
import urllib.parse
from pathlib import Path

from crackseg.measure import JOINT, TYPES
from crackseg.report.crack_outputs import CLASS_COLOURS, width_classes

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.sw{display:inline-block;width:1em;height:1em;vertical-align:middle;border:1px solid #888;margin-right:.3em}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figure img{max-width:800px;border:1px solid #ccc}
"""


# the page needs no script and loads nothing: only inline styles and embedded (data:) images
_CSP = ("<meta http-equiv='Content-Security-Policy' "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">")


MAX_FIGURES = 200  # overlays embedded: the photos with the widest cracks (a thumbnail is ~50-100 KB)
MAX_CRACKS = 2000  # rows of the crack table: the widest (cracks.csv has them all)


def render_report(entries: list[dict], settings: dict, generated: str, max_figures: int = MAX_FIGURES,
                  max_cracks: int = MAX_CRACKS) -> str:
    """The page for ``entries`` (per photo: ``photo``, ``status``, ``document`` (its cracks JSON or
    None), ``thumb`` (path of its JPEG thumbnail, or None), ``overlay`` (path of the full-size width
    overlay relative to the report, with ``/``)). A campaign's page stays small enough to open:
    it embeds the thumbnails of the ``max_figures`` photos with the widest cracks (the others link
    their overlay files) and lists the ``max_cracks`` widest cracks."""
    mm_per_px = settings.get("mm_per_px")
    unit = "mm" if mm_per_px else "px"
    classes = width_classes(mm_per_px)
    measured = [e for e in entries if e["document"]]
    shown = {e["photo"] for e in sorted(measured, key=lambda e: -e["document"]["totals"]["max_width"])[:max_figures]}
    figures = [e for e in measured if e["photo"] in shown]
    cracks = [(e, c) for e in measured for c in e["document"]["cracks"]]
    cracks.sort(key=lambda ec: -ec[1]["max_width"])
    proper = [c for _, c in cracks if c["type"] != JOINT]  # joints are listed, but not counted as cracks
    total_length = sum(c["length"] for c in proper)
    widest = max((c["max_width"] for c in proper), default=0)

    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{_CSP}<title>Crack report</title>"
        f"<style>{_STYLE}</style></head><body><h1>Crack report</h1>",
        f"<p>{len(entries)} photo(s), {len(measured)} measured; {len(proper)} crack(s), total length "
        f"{total_length:.6g} {unit}, widest {widest:g} {unit}; {len(cracks) - len(proper)} joint(s). Generated {_e(generated)} by crackseg.</p>",
        "<p>Width classes (overlays colour each point of a crack's centre line by its local width; the "
        "tables give the class of a crack's maximum width): "
        + " ".join(f"{_swatch(i)}{_e(label)}" for i, label in enumerate(classes)) + "</p>",
        "<h2>Photos</h2>", _photo_table(entries, shown, classes, unit),
        "<h2>Overlays</h2>",
        *([f"<p>The {len(figures)} photos with the widest cracks; the overlays of the other "
           f"{len(measured) - len(figures)} are linked in the table above.</p>"] if len(figures) < len(measured) else []),
        *(_figure(e, unit) for e in figures),
        "<h2>Cracks, widest first</h2>",
        *([f"<p>The {max_cracks} widest of {len(cracks)} cracks; cracks.csv lists them all.</p>"]
          if len(cracks) > max_cracks else []),
        _crack_table(cracks[:max_cracks], shown, classes, unit),
        "<h2>Settings used</h2><table>",
        *(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>" for k, v in settings.items()),
        "</table></body></html>\n",
    ]
    return "\n".join(parts)


def _photo_link(entry: dict, shown: set[str]) -> str:
    """The photo's name, linking its figure on this page, else its overlay file."""
    target = f"#{_anchor(entry)}" if entry["photo"] in shown else _relative_url(entry["overlay"])
    return f"<a href='{_e(target)}'>{_e(_name(entry))}</a>"


def _photo_table(entries: list[dict], shown: set[str], classes: list[str], unit: str) -> str:
    head = (["photo", "status", "size", "cracks", f"total length ({unit})", f"max width ({unit})"]
            + list(TYPES) + [f"{_swatch(i)}{_e(c)}" for i, c in enumerate(classes)])
    rows = []
    for entry in entries:
        doc = entry["document"]
        name = _photo_link(entry, shown) if doc else _e(_name(entry))
        cells = [f"<td class='l'>{name}</td>", f"<td class='l'>{_e(entry['status'])}</td>"]
        if doc:
            totals = doc["totals"]
            values = ([f"{doc['width']}x{doc['height']}", totals["cracks"], f"{totals['total_length']:g}",
                       f"{totals['max_width']:g}"] + [totals["types"].get(t, 0) for t in TYPES]  # older files: no joints
                      + [totals["width_classes"].get(c, 0) for c in classes])
            cells += [f"<td>{_e(v)}</td>" for v in values]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(head, rows)


def _crack_table(cracks: list[tuple[dict, dict]], shown: set[str], classes: list[str], unit: str) -> str:
    head = ["photo", "crack", "type", "width class", f"length ({unit})", f"max width ({unit})", f"mean width ({unit})",
            f"p90 width ({unit})", "orientation (deg)", "branches", "ends", "centroid x, y (px)"]
    rows = []
    for entry, c in cracks:
        cls = classes.index(c["width_class"]) if c["width_class"] in classes else 0
        values = [c["length"], c["max_width"], c["mean_width"], c["p90_width"], c["orientation_deg"], c["branches"],
                  c["ends"], f"{c['centroid'][0]:.0f}, {c['centroid'][1]:.0f}"]
        rows.append(f"<tr><td class='l'>{_photo_link(entry, shown)}</td><td>{c['id']}</td>"
                    f"<td class='l'>{_e(c['type'])}</td><td class='l'>{_swatch(cls)}{_e(c['width_class'])}</td>"
                    + "".join(f"<td>{_e(v)}</td>" for v in values) + "</tr>")
    return _table(head, rows)


def _figure(entry: dict, unit: str) -> str:
    totals = entry["document"]["totals"]
    caption = (f"{_e(_name(entry))}: {totals['cracks']} crack(s), {totals['total_length']:g} {unit} in all, "
               f"widest {totals['max_width']:g} {unit}")
    thumb = Path(entry["thumb"]).read_bytes() if entry["thumb"] and Path(entry["thumb"]).is_file() else None
    image = (f"<img alt='width overlay of {_e(_name(entry))}' src='data:image/jpeg;base64,"
             f"{base64.b64encode(thumb).decode()}'>" if thumb else "(no thumbnail)")
    return (f"<figure id='{_anchor(entry)}'><a href='{_e(_relative_url(entry['overlay']))}'>{image}</a>"
            f"<figcaption>{caption}</figcaption></figure>")


def _table(head: list[str], rows: list[str]) -> str:
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n" + "\n".join(rows) + "</table>"


def _swatch(index: int) -> str:
    r, g, b = CLASS_COLOURS[index]
    return f"<span class='sw' style='background:rgb({r},{g},{b})'></span>"


def _name(entry: dict) -> str:
    return entry["photo"]


def _anchor(entry: dict) -> str:
    """Unique per photo key (relative path): its characters, others as their code point."""
    return "photo-" + "".join(ch if ch.isalnum() else f"-{ord(ch):x}-" for ch in entry["photo"])


def _relative_url(relative_path: str) -> str:
    """A link to a file under the report's folder (``a/b.jpg``): every segment percent-encoded,
    starting with ``./``, so a name such as ``javascript:x.jpg`` or ``a#b?.jpg`` stays a plain
    relative path."""
    return "./" + "/".join(urllib.parse.quote(part, safe="") for part in relative_path.split("/"))


def _e(value) -> str:
    return html.escape(str(value), quote=True)
