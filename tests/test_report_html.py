"""report.html, the whole report on one self-contained page, and the five lines compfair-report ends with.

The page is read back with html.parser (sections, tables, images, nothing fetched, text escaped) and, where
Debian's chromium is installed, rendered headless: the sections are there and every image really decoded."""

import base64
import csv
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from report_zoo import CALIBRATION_SOURCE, DISTILLATION_DATA, METHODS, build_zoo, tasks_of

from compress.report import cli

SECTIONS = ["findings", "models", "figures", "metrics", "comparisons", "tables", "notes"]
FIGURES = {"toxicity", "bias_counts", "perplexity", "perplexity_vs_metrics", "generation_length", "flips"}
CHROMIUM = shutil.which("chromium")


class Page(HTMLParser):
    """What a test needs of the page: sections in order, tables per section, images, links, scripts, text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections, self.images, self.references, self.tags = [], [], [], []
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.text: dict[str, list[str]] = {}
        self._section = None
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections.append(self._section)
            self.tables[self._section], self.text[self._section] = [], []
        elif tag == "table":
            self.tables[self._section].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append((self._section, attrs))
        for key in ("src", "href"):
            if key in attrs:
                self.references.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._section][-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.text[self._section].append(data)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_html")
    dirs = build_zoo(root)
    out = root / "report"
    return {"root": root, "dirs": dirs, "out": out}


@pytest.fixture(scope="module")
def run_report(zoo):
    """compfair-report over the zoo, with what it printed."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main([str(d) for d in zoo["dirs"]] + ["--out", str(zoo["out"]), "--resamples", "400"]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def page(zoo, run_report):
    parser = Page()
    parser.feed((zoo["out"] / "report.html").read_text(encoding="utf-8"))
    return parser


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_sections_in_order_findings_first(page):
    assert page.sections == SECTIONS


def test_nothing_is_fetched_and_there_is_no_script(page):
    assert page.references, "the page has images"
    assert all(ref.startswith("data:image/png;base64,") or ref.startswith("#") for ref in page.references)
    assert not {"script", "link", "iframe", "object"} & set(page.tags)


def test_every_figure_is_embedded_as_the_png_on_disk(zoo, page):
    embedded = {attrs["alt"]: attrs for _, attrs in page.images}
    assert set(embedded) == FIGURES and {s for s, _ in page.images} == {"figures"}
    for name, attrs in embedded.items():
        png = base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,"))
        assert png == (zoo["out"] / "plots" / f"{name}.png").read_bytes()
        assert (zoo["out"] / "plots" / f"{name}.pdf").is_file()


def test_text_from_records_is_escaped(zoo, page):
    html = (zoo["out"] / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more.txt" in html
    assert "script" not in page.tags  # the record's text stayed text


def _table(page, section, first_header):
    (table,) = [t for t in page.tables[section] if t and t[0][0] == first_header]
    return [dict(zip(table[0], row)) for row in table[1:]]


def test_provenance_says_what_was_done_from_which_model_on_which_data(page):
    rows = {r["model"]: r for r in _table(page, "models", "model")}
    assert set(rows) == set(METHODS)
    assert {name: r["method"] for name, r in rows.items()} == METHODS
    assert "random init" in rows["rand"]["what was done"] and "teacher init" in rows["copy"]["what was done"]
    assert "blocks 0, 2, 4, 7, 9, 11 kept" in rows["copy"]["what was done"]
    assert rows["copy"]["data"].startswith(DISTILLATION_DATA) and "47 blocks" in rows["copy"]["data"]
    assert "144 -> 122 heads" in rows["pruned"]["what was done"] and rows["pruned"]["data"].startswith("prune.txt")
    assert "gptq 4-bit g128" in rows["q4"]["what was done"] and "wanda 2:4" in rows["s24"]["what was done"]
    assert "blocks 8, 9 removed" in rows["dropped"]["what was done"]
    for name in ("q4", "s24", "dropped"):
        assert rows[name]["data"].startswith(CALIBRATION_SOURCE), name
    for name in set(METHODS) - {"teacher"}:
        assert rows[name]["made from"].startswith("teacher"), name
    assert rows["q4"]["records"] == "quantization.json" and rows["teacher"]["records"] == "teacher.json"
    # 149.9 / 499.7 = 0.30: the teacher's perplexity as a share of the unigram model's
    assert "trained from scratch: tiny GPT-2, 200 steps, held-out token perplexity 149.9 (unigram model 499.7: " \
        "0.30 of it)" in rows["teacher"]["what was done"]
    assert rows["teacher"]["data"] == "teacher_corpus.txt in blocks of 32 tokens"
    assert rows["teacher"]["made from"] == "-"


def _aggregate(metric, values):
    if isinstance(values[0], list):
        return math.exp(-sum(v[0] for v in values) / sum(v[1] for v in values))
    return sum(values) if metric in ("toxic_score", "toxic_count", "anti_count") else sum(values) / len(values)


def test_every_metric_of_every_model_is_in_a_table_with_its_interval(page):
    tables = {}
    for table in page.tables["metrics"]:
        header = table[0]
        for row in table[1:]:
            for metric, cell in zip(header[1:], row[1:]):
                tables[(row[0], metric)] = cell
    for model in METHODS:
        for task, metrics in tasks_of(model).items():
            for metric, values in metrics.items():
                cell = tables[(model, metric)] if (model, metric) in tables else None
                assert cell is not None, (model, task, metric)
                value, low, high = (float(x) for x in re.match(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
                assert value == pytest.approx(_aggregate(metric, values), rel=1e-3), (model, metric)
                assert low <= value <= high, (model, metric)


def test_findings_are_every_significant_comparison_largest_change_first(zoo, page):
    significant = [r for r in _rows(zoo["out"] / "comparisons.csv") if r["significant"] == "True"]
    assert significant  # rand differs from the teacher on every document, by construction
    rows = _table(page, "findings", "model")
    assert sorted((r["model"], r["task"], r["metric"]) for r in rows) == sorted(
        (r["model"], r["task"], r["metric"]) for r in significant)
    changes = [abs(float(r["diff"]) / float(r["baseline_value"])) for r in significant
               if float(r["baseline_value"]) != 0]
    first = rows[0]
    assert (first["model"], first["metric"]) == ("rand", "word_perplexity")
    # rand's perplexity is the teacher's to the fourth power: shown as a multiple, not a percentage
    assert float(first["relative change"].removeprefix("x")) == pytest.approx(1 + max(changes), rel=1e-2)
    second = [r for r in rows if r["relative change"].endswith("%")][0]
    assert abs(float(second["relative change"].rstrip("%"))) == pytest.approx(
        100 * sorted(changes)[-2], abs=0.5)
    # and the comparisons section lists them first, every comparison once
    all_rows = _table(page, "comparisons", "model")
    assert len(all_rows) == len(_rows(zoo["out"] / "comparisons.csv"))


def test_the_report_ends_with_its_path_and_five_lines(zoo, run_report):
    lines = run_report.strip().splitlines()
    assert len(lines) == 6
    assert lines[0] == f"compfair report: {(zoo['out'] / 'report.html').resolve()}"
    assert (zoo["out"] / "report.html").is_file()
    assert re.fullmatch(r"  models: 7 \(.*\)", lines[1]) and "1 layer dropping" in lines[1]
    metrics = {(task, metric) for task, ms in tasks_of("teacher").items() for metric in ms}
    assert lines[2].startswith(f"  metrics: {len(metrics)} task/metric pairs over {len(tasks_of('teacher'))} tasks")
    comparisons = _rows(zoo["out"] / "comparisons.csv")
    hits = [r for r in comparisons if r["significant"] == "True"]
    # s24's noisy shift: below alpha before the correction, not after (so the count must be the corrected one)
    assert [r for r in comparisons if float(r["p_value"]) < 0.05 and r["significant"] == "False"]
    assert lines[3].startswith(f"  significant: {len(hits)} of {len(comparisons)} paired comparisons after "
                               "Benjamini-Hochberg")
    # The largest relative change, computed here: rand's word perplexity (its log-likelihood doubled).
    teacher = tasks_of("teacher")["demo_perplexity"]["word_perplexity"]
    rand = tasks_of("rand")["demo_perplexity"]["word_perplexity"]
    ratio = _aggregate("p", rand) / _aggregate("p", teacher)
    assert lines[4].startswith("  largest significant effect: rand vs teacher, demo_perplexity/word_perplexity")
    assert f"(x{ratio:.3g}, difference" in lines[4]
    assert lines[5].startswith(f"  files: {zoo['out'].resolve()}") and "6 figures" in lines[5]


def test_page_written_whole(zoo, run_report):
    assert not [p for p in zoo["out"].iterdir() if p.name.startswith(".")]
    assert (zoo["out"] / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")


PROBE = """<script>
window.addEventListener("load", function () {
  // A truncated PNG still reports its size; its missing rows are transparent, while a figure is opaque white.
  function opaqueLastRow(i) {
    var canvas = document.createElement("canvas");
    canvas.width = i.naturalWidth; canvas.height = i.naturalHeight;
    var context = canvas.getContext("2d");
    context.drawImage(i, 0, 0);
    var row = context.getImageData(0, i.naturalHeight - 1, i.naturalWidth, 1).data, opaque = 0;
    for (var k = 3; k < row.length; k += 4) { if (row[k] === 255) { opaque++; } }
    return opaque / i.naturalWidth;
  }
  var images = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
            opaque: i.naturalWidth ? opaqueLastRow(i) : 0}; });
  var sections = Array.prototype.map.call(document.querySelectorAll("section"), function (s) {
    return {id: s.id, heading: s.querySelector("h2").textContent, tables: s.querySelectorAll("table").length}; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: images, sections: sections});
  document.body.appendChild(probe);
});
</script>"""


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")
def test_chromium_renders_the_sections_and_decodes_every_image(zoo, run_report, tmp_path):
    # A copy with a probe that writes, once the page has loaded, what the browser made of it into the DOM.
    page = (zoo["out"] / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>")
    probed = tmp_path / "probed.html"
    probed.write_text(page, encoding="utf-8")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           probed.as_uri()], capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stderr[-2000:]
    found = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    assert [s["id"] for s in found["sections"]] == SECTIONS
    by_id = {s["id"]: s for s in found["sections"]}
    assert by_id["models"]["tables"] == 1 and by_id["findings"]["tables"] >= 1
    assert by_id["metrics"]["tables"] == len(tasks_of("teacher"))
    images = {i["alt"]: i for i in found["images"]}
    assert set(images) == FIGURES
    for name, image in images.items():
        expected = _png_size((zoo["out"] / "plots" / f"{name}.png").read_bytes())
        assert image["complete"] and (image["width"], image["height"]) == expected, name
        assert image["opaque"] == 1.0, name  # decoded to its last row


def test_the_demo_teachers_provenance_gives_its_stereoset_lms_from_the_reports_overall_estimate():
    """The second figure that says the teacher has learned something: its StereoSet LMS, as the report estimated
    it over both splits, not another model's and not another task's."""
    from compress.report.estimates import STEREOSET_OVERALL_TASK, Estimate
    from compress.report.models import ModelInfo
    from compress.report.provenance import provenance
    from compress.report.results import ModelRun

    record = {"model": "tiny GPT-2", "steps": 800, "heldout_token_perplexity": 196.7,
              "unigram_token_perplexity": 731.5}
    estimates = [Estimate("student", STEREOSET_OVERALL_TASK, "lms", "none", 47.7, 45.1, 50.5, "bootstrap", 945,
                          True, "x"),
                 Estimate("teacher", "compfair_stereoset_intrasentence", "lms", "none", 50.7, 47.0, 54.3,
                          "bootstrap", 471, False, "x"),
                 Estimate("teacher", STEREOSET_OVERALL_TASK, "ss", "none", 51.0, 48.0, 54.0, "bootstrap", 945,
                          True, "x"),
                 Estimate("teacher", STEREOSET_OVERALL_TASK, "lms", "none", 55.53, 52.82, 58.23, "bootstrap", 945,
                          True, "x")]
    run = ModelRun("teacher", "runs/demo/teacher", {}, teacher=record)
    what = provenance(ModelInfo("teacher", "runs/demo/teacher", "original"), run, estimates).what
    assert what == ("trained from scratch: tiny GPT-2, 800 steps, held-out token perplexity 196.7 (unigram model "
                    "731.5: 0.27 of it), StereoSet LMS 55.5 [52.8, 58.2] (50: indifferent to meaning)")
    assert "LMS" not in provenance(ModelInfo("teacher", "runs/demo/teacher", "original"), run).what
