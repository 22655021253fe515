"""report.html: links built from photo names stay relative file links; nothing runs."""

import re

from crackseg.measure import TYPES
from crackseg.report.html import render_report


def _entry(key: str) -> dict:
    totals = {"cracks": 0, "total_length": 0, "max_width": 0, "types": {t: 0 for t in TYPES}, "width_classes": {}}
    return {"photo": f"{key}.jpg", "status": "ok", "thumb": None, "overlay": f"{key}_widths.jpg",
            "document": {"width": 10, "height": 8, "totals": totals, "cracks": []}}


def test_file_links_are_percent_encoded_relative_urls_and_no_script_can_run():
    keys = ["javascript:alert(1);x", "a#b", "100%", "what?", "plain name", "card A/DSC_0001", "card B/DSC_0001"]
    page = render_report([_entry(k) for k in keys], {"threshold": 0.5}, "now")
    links = re.findall(r"href='([^']*)'", page)
    files = [link for link in links if not link.startswith("#")]
    assert files == ["./javascript%3Aalert%281%29%3Bx_widths.jpg", "./a%23b_widths.jpg", "./100%25_widths.jpg",
                     "./what%3F_widths.jpg", "./plain%20name_widths.jpg", "./card%20A/DSC_0001_widths.jpg",
                     "./card%20B/DSC_0001_widths.jpg"]
    anchors = [link for link in links if link.startswith("#")]
    assert all(re.fullmatch(r"#photo-[A-Za-z0-9-]+", link) for link in anchors) and len(set(anchors)) == len(keys)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page and "<script" not in page


def _measured_entry(key: str, width: float, thumb) -> dict:
    entry = _entry(key)
    crack = {"id": 1, "type": "horizontal", "width_class": "2-4 px", "length": 30.0, "max_width": width,
             "mean_width": width, "p90_width": width, "orientation_deg": 0.0, "branches": 1, "ends": 2,
             "centroid": [5.0, 4.0]}
    entry["document"]["cracks"] = [crack]
    entry["document"]["totals"] = {**entry["document"]["totals"], "cracks": 1, "total_length": 30.0, "max_width": width}
    return {**entry, "thumb": thumb}


def test_a_campaign_report_embeds_the_widest_photos_and_links_the_rest(tmp_path):
    thumb = tmp_path / "t.jpg"
    thumb.write_bytes(b"\xff\xd8 a thumbnail")
    entries = [_measured_entry(k, w, thumb) for k, w in (("a", 2.0), ("b", 9.0), ("c", 5.0))]
    page = render_report(entries, {"threshold": 0.5}, "now", max_figures=2, max_cracks=2)
    assert page.count("<figure") == 2 and page.count("data:image/jpeg;base64,") == 2
    figures = re.findall(r"<figure id='([^']*)'", page)
    assert figures == ["photo-b-2e-jpg", "photo-c-2e-jpg"]  # the two widest, in the table's order
    assert "<a href='./a_widths.jpg'>a.jpg</a>" in page  # the rest link their overlay file
    assert "The 2 photos with the widest cracks; the overlays of the other 1 are linked" in page
    assert "The 2 widest of 3 cracks; cracks.csv lists them all." in page
    crack_table = page.split("<h2>Cracks, widest first</h2>")[1].split("<h2>")[0]
    assert crack_table.count("<tr><td") == 2 and "a.jpg" not in crack_table
    assert render_report(entries, {}, "now").count("<figure") == 3
