"""The first screen in a real headless Chromium at 1400x900: a screenshot of exactly that viewport,
and the DOM positions of the Judges box and the headline table, which must both lie inside it.

The report page has no script (it is self-contained and static); to read layout positions the
test loads a copy with one inline script that writes `getBoundingClientRect()` of both elements
into a body attribute, and reads it back with --dump-dom. Results are planted in the tiny
lifecycle's shape (tests/report/tiny_fixture.py). Skipped without a chromium binary.
The screenshots are left next to the test's tmp dir (sip-first-screen-*.png) for a human to look at.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess

import pytest

from sip_core.report import save_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTH, HEIGHT = 1400, 900
PROBE = """<script>
(function () {
  var out = {viewport: [window.innerWidth, window.innerHeight]};
  ["judges", "headline"].forEach(function (id) {
    var r = document.getElementById(id).getBoundingClientRect();
    out[id] = [r.left, r.top, r.right, r.bottom];
  });
  document.body.setAttribute("data-rects", JSON.stringify(out));
})();
</script>"""


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
@pytest.mark.parametrize("circular", [True, False])
def test_judges_box_and_headline_table_are_on_the_first_screen(tmp_path, circular):
    from PIL import Image
    from tiny_fixture import tiny_results

    save_report(tiny_results(circular=circular), str(tmp_path / "report"))
    page = tmp_path / "report" / "report.html"
    shot = tmp_path / "first-screen.png"
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    im = Image.open(io.BytesIO(shot.read_bytes()))
    assert im.size == (WIDTH, HEIGHT)
    low, high = im.convert("L").getextrema()
    assert high - low > 100  # drawn, not blank

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</main></body>", f"</main>{PROBE}</body>"))
    dom = chromium(tmp_path, "--dump-dom", probed.as_uri()).stdout
    rects = json.loads(html.unescape(re.search(r'data-rects="([^"]+)"', dom).group(1)))
    # --dump-dom's window keeps room for browser chrome (innerHeight < 900), but the page's layout
    # depends on its width only (no vh units): the positions are those of the 1400x900 screenshot
    print("rects:", rects)
    assert rects["viewport"][0] == WIDTH
    for name in ("judges", "headline"):
        left, top, right, bottom = rects[name]
        assert 0 <= left < right <= WIDTH and 0 <= top < bottom <= HEIGHT, (name, rects)
    assert rects["judges"][3] <= rects["headline"][1]  # the Judges box first, then the table
    # what they say: the box's verdict on circularity, the table's arms as columns
    assert ("Grading is circular" if circular else "Grading is independent") in dom
    assert "A · base" in dom and "E · base→SIP" in dom
    # the pixels inside the table's box are not background: the table was drawn there
    left, top, right, bottom = (int(v) for v in rects["headline"])
    region = im.convert("L").crop((left, top, right, bottom))
    assert region.getextrema()[0] < 128
    shutil.copy(shot, tmp_path.parent / f"sip-first-screen-{'circular' if circular else 'independent'}.png")
