"""The report as a list of blocks (headings, paragraphs, tables, images), rendered alike to Markdown,
to self-contained HTML (pictures embedded) and, for tables, to plain text for the console."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Image:
    file_name: str
    png: bytes
    caption: str
    alt: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # columns from this one hold numbers

    def to_text(self) -> str:
        """Fixed-width columns under a rule, for the console (bold marks dropped)."""
        cells = [[str(v).replace("**", "") for v in row] for row in [self.header, *self.rows]]
        widths = [max(len(row[c]) for row in cells) for c in range(len(self.header))]

        def line(row: list[str]) -> str:
            return "  ".join(
                v.rjust(w) if c >= self.align_right_from else v.ljust(w) for c, (v, w) in enumerate(zip(row, widths))
            ).rstrip()

        rule = "-" * len(line(cells[0]))
        return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


@dataclass
class Document:
    """The report as blocks, rendered to Markdown and to HTML alike."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2):
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str):
        self.blocks.append(("paragraph", text))

    def table(self, table: Table):
        self.blocks.append(("table", table))

    def image(self, image: Image):
        self.blocks.append(("image", image))

    @property
    def images(self) -> list[Image]:
        return [block[1] for block in self.blocks if block[0] == "image"]

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "paragraph":
                lines += [block[1], ""]
            elif kind == "table":
                table = block[1]
                cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
                lines.append("| " + " | ".join(cell(h) for h in table.header) + " |")
                lines.append(
                    "|"
                    + "|".join("---" if c < table.align_right_from else "---:" for c in range(len(table.header)))
                    + "|"
                )
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
                lines.append("")
            elif kind == "image":
                image = block[1]
                lines += [f"![{image.alt or image.caption}]({image.file_name})", "", f"*{image.caption}*", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        def inline(text: str) -> str:
            # The one Markdown emphasis the report uses: **bold**.
            return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(text)))

        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            "<style>",
            "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1500px;margin:2em auto;"
            "padding:0 1em;color:#1f2328}",
            "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 10px}",
            "th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}",
            "figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}",
            "figcaption{color:#57606a;font-size:.9em}",
            ".best{background:#dafbe1;border-left:4px solid #1a7f37;padding:.6em 1em}",
            "</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{inline(block[2])}</h{block[1]}>")
            elif kind == "paragraph":
                css = (
                    ' class="best"'
                    if block[1].startswith("**The best model") or block[1].startswith("**Only one")
                    else ""
                )
                parts.append(f"<p{css}>{inline(block[1])}</p>")
            elif kind == "table":
                table = block[1]
                parts.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{inline(h)}</th>" for h in table.header)
                    + "</tr></thead><tbody>"
                )
                for row in table.rows:
                    cells = "".join(
                        f'<td class="num">{inline(v)}</td>' if c >= table.align_right_from else f"<td>{inline(v)}</td>"
                        for c, v in enumerate(row)
                    )
                    parts.append(f"<tr>{cells}</tr>")
                parts.append("</tbody></table>")
            elif kind == "image":
                image = block[1]
                data = base64.b64encode(image.png).decode("ascii")
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image.alt or image.caption)}">'
                    f"<figcaption>{html.escape(image.caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)
