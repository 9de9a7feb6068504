"""Rendered leaderboards: stale check, the sortable page in a real headless browser, the PNG plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from robust_ens import leaderboard as lb
from robust_ens.cli import main
from robust_ens.leaderboard import GENERATED, stale_files
from robust_ens.leaderboard.plots import PLOT_DPI, plot_size

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "leaderboards"


@pytest.fixture()
def board(tmp_path: Path) -> Path:
    """A copy of the committed leaderboard (entries only), rendered."""
    root = tmp_path / "leaderboards"
    for p in lb.entry_files(COMMITTED):
        dst = root / p.relative_to(COMMITTED)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    if not list(root.rglob("*.json")):
        pytest.fail("the committed leaderboard holds no entries")
    lb.render_all(root)
    return root


def test_committed_rendering_is_current() -> None:
    stale = stale_files(COMMITTED)
    assert not stale, "run: robust-ens leaderboard render\n" + "\n".join(stale)


def test_stale_check_catches_a_hand_edit_and_a_changed_entry(board: Path, capsys) -> None:
    assert stale_files(board) == []
    assert main(["leaderboard", "render", "--check", "--root", str(board)]) == 0
    readme = board / "README.md"
    readme.write_text(readme.read_text().replace("| 1 ", "| 9 ", 1))
    assert [s for s in stale_files(board) if "README.md" in s]
    assert main(["leaderboard", "render", "--check", "--root", str(board)]) == 1
    assert "README.md" in capsys.readouterr().out
    entry = next(p for p in lb.entry_files(board) if p.parent.name == "digits-transfer")
    d = json.loads(entry.read_text())
    d["results"]["clean"]["per_class"] = [None] * len(d["results"]["clean"]["per_class"])  # any change to an entry
    entry.write_text(json.dumps(d))
    stale = stale_files(board)
    assert any("pages/digits-transfer.html" in s for s in stale) and any("robust-vs-eps.png" in s for s in stale)
    assert main(["leaderboard", "render", "--root", str(board)]) == 0
    assert stale_files(board) == []


def test_every_generated_file_says_do_not_edit(board: Path) -> None:
    from PIL import Image

    assert GENERATED in (board / "README.md").read_text()
    for page in (board / "pages").glob("*.html"):
        assert GENERATED in page.read_text() and "http" not in re.sub(r"<a [^>]*>", "", page.read_text()).split("<script>")[1]
    pngs = list((board / "plots").rglob("*.png"))
    assert pngs
    for png in pngs:
        img = Image.open(png)
        size = plot_size(png.name)
        assert img.format == "PNG" and img.size == (int(size[0] * PLOT_DPI), int(size[1] * PLOT_DPI))
        assert "do not edit" in img.info["Description"]
        img.load()  # the whole image decodes


def test_plots_one_line_per_entry_and_a_heatmap_per_defense(board: Path) -> None:
    defenses = [e for e in lb.load_entries(board) if isinstance(e, lb.Entry) and e.kind == "defense" and e.results.cells]
    names = {p.name for p in (board / "plots" / "digits-transfer").glob("*.png")}
    assert "robust-vs-eps.png" in names
    assert {f"{e.name}-transfer.png" for e in defenses if e.protocol.suite == "digits-transfer"} <= names


def test_render_finds_the_root_from_cwd_or_environment(tmp_path: Path, board: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # as from an installed wheel: nothing is looked up in site-packages
    monkeypatch.delenv(lb.ENV_ROOT, raising=False)
    (board / "README.md").unlink()
    assert main(["leaderboard", "render"]) == 0
    assert (board / "README.md").is_file()
    elsewhere = tmp_path / "other"
    shutil.copytree(board, elsewhere)
    (elsewhere / "README.md").unlink()
    monkeypatch.setenv(lb.ENV_ROOT, str(elsewhere))
    assert main(["leaderboard", "render"]) == 0 and (elsewhere / "README.md").is_file()
    assert main(["leaderboard", "validate"]) == 0
    monkeypatch.setenv(lb.ENV_ROOT, str(tmp_path / "none"))
    assert main(["leaderboard", "render"]) == 2
    assert "is not a folder of leaderboard entries" in capsys.readouterr().err


class _Rows(HTMLParser):
    """The rows of the table with id ``table_id`` of a page, as cell texts."""

    def __init__(self, table_id: str = "leaderboard-smoke") -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self.header: list[str] | None = None
        self.table_id = table_id
        self.inside = False
        self.cell: list[str] | None = None
        self.in_body = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.inside = dict(attrs).get("id") == self.table_id
        if self.inside and tag == "tbody":
            self.in_body = True
        if self.inside and self.in_body and tag == "tr":
            self.rows.append([])
        if self.inside and self.in_body and tag == "td":
            self.cell = []
        if self.inside and tag == "th":
            self.header = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self.header is not None:
            self.headers.append("".join(self.header).replace("\xa0", " ").strip())
            self.header = None
        if tag == "tbody":
            self.in_body = False
        if tag == "td" and self.cell is not None and self.rows:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)
        if self.header is not None:
            self.header.append(data)


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _dom(browser: str, url: str) -> list[list[str]]:
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          "--virtual-time-budget=2000", "--dump-dom", url], capture_output=True, text=True, timeout=600)  # a hang guard only
    assert out.returncode == 0, out.stderr[-2000:]
    p = _Rows()
    p.feed(out.stdout)
    return p.rows


def test_page_sorts_by_a_clicked_column_in_a_headless_browser(board: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium) to click the page's headers")
    page = (board / "pages" / "digits-transfer.html").resolve()
    original = _Rows()
    original.feed(page.read_text())
    assert len(original.rows) >= 2
    col = next(i for i, h in enumerate(original.headers) if h.startswith("worst @ 0.2"))
    name = original.headers.index("name")
    url = f"{page.as_uri()}#table=leaderboard-smoke"
    asc = _dom(browser, f"{url}&click={col}")           # one click: ascending
    desc = _dom(browser, f"{url}&click={col},{col}")    # a second click: descending
    by_name = _dom(browser, f"{url}&click={name}")
    values = [float(r[col].split()[0]) for r in asc]  # "35.0 [22.1, 50.5]": the value, then its interval
    assert values == sorted(values) and [float(r[col].split()[0]) for r in desc] == sorted(values, reverse=True)
    assert [r[name] for r in by_name] == sorted(r[name] for r in original.rows)
    assert sorted(map(tuple, asc)) == sorted(map(tuple, original.rows))  # the same rows, reordered
