"""A small Markdown-to-HTML converter for the reports this package writes.

The reports use a fixed subset of Markdown: ``#`` headings, paragraphs, pipe
tables, ``- `` lists, fenced code blocks, images ``![alt](file.png)``, inline
``code``, ``**bold**`` and ``*italic*``.  Converting that subset here keeps the
package free of a Markdown dependency.  Images are embedded as base64 data URIs
so the page is self-contained (one file to mail or attach).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 0.2em; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; }
"""


def _inline(text: str, base: Path) -> str:
    """Inline markup of one line: images, code, bold, italic (HTML-escaped)."""
    parts: list[str] = []
    pos = 0
    for m in _IMAGE.finditer(text):
        parts.append(_inline_text(text[pos:m.start()]))
        parts.append(_image(m.group(1), m.group(2), base))
        pos = m.end()
    parts.append(_inline_text(text[pos:]))
    return "".join(parts)


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")  # [text](target), after HTML escaping
_MIME = {".png": "image/png", ".gif": "image/gif"}


def _inline_text(text: str) -> str:
    chunks = re.split(r"(`[^`]*`)", text)
    out = []
    for chunk in chunks:
        if chunk.startswith("`") and chunk.endswith("`") and len(chunk) >= 2:
            out.append(f"<code>{html.escape(chunk[1:-1])}</code>")
            continue
        s = html.escape(chunk, quote=False)
        s = _LINK.sub(lambda m: f'<a href="{html.escape(html.unescape(m.group(2)))}">{m.group(1)}</a>', s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _image(alt: str, src: str, base: Path) -> str:
    path = base / src
    mime = _MIME.get(path.suffix.lower())
    if path.is_file() and mime:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'
    return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'


def _table(rows: list[str], base: Path) -> str:
    # Cells are separated by unescaped pipes; an escaped one (backslash, pipe) is text.
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip()[1:-1])]
             for r in rows]
    head, body = cells[0], cells[2:]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c, base)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c, base)}</td>" for c in r) + "</tr>" for r in body]
    out.append("</table>")
    return "\n".join(out)


def markdown_to_html(text: str, base: Path | str = ".", title: str = "report") -> str:
    """Convert report Markdown to a self-contained HTML page.

    Args:
        text: the Markdown.
        base: folder that relative image paths are resolved against.
        title: the page title.
    """
    base = Path(base)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2), base)}</h{level}>")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[-:| ]+\|\s*$", lines[i + 1]):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j], base))
            i = j
            continue
        if re.match(r"^\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"^\s*[-*] ", lines[i]):
                item = re.sub(r"^\s*[-*] ", "", lines[i])
                items.append(f"<li>{_inline(item, base)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if not line.strip():
            i += 1
            continue
        para = [line]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||```|\s*[-*] )", lines[i]):
            para.append(lines[i])
            i += 1
        out.append("<p>" + _inline(" ".join(para), base) + "</p>")
    body = "\n".join(out)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
