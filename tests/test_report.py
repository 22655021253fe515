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
