"""A tiny document model written out twice: as Markdown and as a self-contained HTML page.

Blocks: Heading, Para (kind "warn" / "ok" / "note" / ""), Table, Image (a PNG by file name),
Bullets, Box (blocks in one framed element with an id: the first screen's parts) and Details
(blocks collapsed under a summary: `<details>` in both outputs). Text may use **bold**;
everything else is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str
    kind: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    anchor: str = ""  # the HTML id of the table's wrapper


@dataclass
class Box:
    anchor: str
    blocks: list
    kind: str = "note"


@dataclass
class Toc:
    """Where the HTML page's table of contents goes (nothing in Markdown); without one, under the title."""


@dataclass
class Details:
    summary: str
    blocks: list


@dataclass
class Image:
    name: str
    alt: str
    caption: str = ""


@dataclass
class Bullets:
    items: list[str]
    kind: str = ""


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LABEL = {"warn": "⚠ WARNING", "ok": "✓", "note": "Note"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


# --------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    return "\n".join([f"# {doc.title}", "", *_md_blocks(doc.blocks)]).rstrip() + "\n"


def _md_blocks(blocks: list) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Toc):
            continue
        if isinstance(b, Box):
            out += _md_blocks(b.blocks)
        elif isinstance(b, Details):
            out += ["<details>", f"<summary>{html.escape(b.summary)}</summary>", "", *_md_blocks(b.blocks),
                    "</details>", ""]
        elif isinstance(b, Heading):
            out += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Para):
            if b.kind == "warn":
                out += [f"> **⚠ WARNING:** {b.text}", ""]
            elif b.kind in ("ok", "note"):
                out += [f"> {b.text}", ""]
            else:
                out += [b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({b.name})", ""]
            if b.caption:
                out += [f"*{b.caption}*", ""]
        elif isinstance(b, Bullets):
            prefix = "> " if b.kind == "warn" else ""
            out += [f"{prefix}- {item}" for item in b.items] + [""]
    return out


# --------------------------------------------------------------------------- html

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;background:#f6f7f9;
color:#1b1f24;line-height:1.45;font-size:15px}
main{max-width:1320px;margin:0 auto;padding:16px 24px 64px;background:#fff;box-shadow:0 0 6px rgba(0,0,0,.08)}
h1{font-size:26px;margin:4px 0 8px;border-bottom:3px solid #1f77b4;padding-bottom:8px}
h2{font-size:22px;margin:36px 0 12px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:17px;margin:24px 0 8px}
h4{font-size:15px;margin:18px 0 6px;color:#444}
p{margin:8px 0}
.box{padding:10px 14px;border-radius:6px;margin:12px 0;border-left:6px solid}
.warn{background:#fdecea;border-color:#d32f2f;color:#7f1010;font-weight:600}
.ok{background:#e8f5e9;border-color:#2e7d32;color:#1b5e20}
.note{background:#f1f3f5;border-color:#8c959f;color:#333}
ul.warn{padding:10px 14px 10px 34px;border-radius:6px;border-left:6px solid}
.tablewrap{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:13px;min-width:40%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600}
tr:nth-child(even) td{background:#fafbfc}
td{font-variant-numeric:tabular-nums}
.caption{font-style:italic;color:#555;font-size:13px;margin:2px 0}
figure{margin:12px 0 20px}
figure img{max-width:100%;height:auto;border:1px solid #e1e4e8}
nav.toc{font-size:13px;background:#f6f8fa;padding:8px 14px;border-radius:6px;margin:10px 0}
nav.toc a{margin-right:14px;color:#0b5cad;text-decoration:none}
section.box{padding:6px 14px;margin:8px 0}
section.box h2{margin:0 0 4px;border:0;font-size:17px;padding:0}
section.box p{margin:4px 0}
section.box .tablewrap{margin:4px 0}
#headline-heading{margin:14px 0 4px}
#headline table{font-size:12.5px;width:100%}
#headline td{white-space:nowrap;padding:3px 6px}
#headline td:first-child{font-weight:600}
details{margin:10px 0;padding:6px 10px;border:1px solid #d0d7de;border-radius:6px}
summary{cursor:pointer;font-weight:600}
"""


def _inline(text: str) -> str:
    return _BOLD.sub(r"<b>\1</b>", html.escape(str(text)))


def to_html(doc: Document, images: dict[str, bytes]) -> str:
    body = [f"<h1>{_inline(doc.title)}</h1>"]
    toc = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    nav = '<nav class="toc">' + "".join(
        f'<a href="#{html.escape(b.anchor or slug(b.text))}">{_inline(b.text)}</a>' for b in toc) + "</nav>"
    blocks = doc.blocks if any(isinstance(b, Toc) for b in doc.blocks) else [Toc(), *doc.blocks]
    body += [nav if isinstance(b, Toc) else "\n".join(_html_blocks([b], images)) for b in blocks
             if toc or not isinstance(b, Toc)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>"
            f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


def _html_blocks(blocks: list, images: dict[str, bytes]) -> list[str]:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Box):
            body.append(f'<section id="{html.escape(b.anchor)}" class="box {b.kind}">'
                        + "\n".join(_html_blocks(b.blocks, images)) + "</section>")
        elif isinstance(b, Details):
            body.append(f"<details><summary>{_inline(b.summary)}</summary>"
                        + "\n".join(_html_blocks(b.blocks, images)) + "</details>")
        elif isinstance(b, Heading):
            body.append(f'<h{b.level} id="{html.escape(b.anchor or slug(b.text))}">{_inline(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            if b.kind:
                label = f"<b>{_LABEL[b.kind]}:</b> " if b.kind == "warn" else ""
                body.append(f'<div class="box {b.kind}">{label}{_inline(b.text)}</div>')
            else:
                body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            cap = f'<p class="caption">{_inline(b.caption)}</p>' if b.caption else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            body.append(f'{cap}<div class="tablewrap"{anchor}><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
        elif isinstance(b, Image):
            data = base64.b64encode(images[b.name]).decode("ascii")
            cap = f"<figcaption class=\"caption\">{_inline(b.caption)}</figcaption>" if b.caption else ""
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.alt)}" '
                        f'data-name="{html.escape(b.name)}">{cap}</figure>')
        elif isinstance(b, Bullets):
            cls = f' class="box {b.kind}"' if b.kind else ""
            body.append(f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
    return body
