"""``report.md`` and its self-contained HTML twin (``report.html``: the markdown converted by
Python-Markdown, every figure embedded as a base64 data URI)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1.5em; color: #1f2328; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
pre { background: #f6f8fa; padding: 10px; border-radius: 4px; overflow-x: auto; }
p.caption { color: #57606a; font-size: 13px; margin-top: .3em; }
"""

IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"]+\.png)"\s*/?>')


def markdown_to_html(markdown_text: str, base_dir: Path, title: str) -> str:
    """A standalone HTML page of ``markdown_text`` (tables, fenced code) whose PNG images,
    given relative to ``base_dir``, are embedded as ``data:image/png;base64`` URIs. Raw HTML
    in the text is escaped.

    Raises:
        FileNotFoundError: an image the markdown links to does not exist.
    """
    import markdown

    converter = markdown.Markdown(extensions=["tables", "fenced_code"])
    # Raw HTML in the text (a run or directory name such as "<img onerror=...>") is shown as
    # text, never rendered: the report writes no HTML of its own into the markdown.
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)

    def embed(match: re.Match) -> str:
        data = base64.b64encode((base_dir / match.group(2)).read_bytes()).decode("ascii")
        return f'<img alt="{match.group(1)}" src="data:image/png;base64,{data}">'

    body = IMAGE.sub(embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def embedded_images(page: str) -> list[bytes]:
    """The PNG bytes of every ``data:image/png;base64`` image in an HTML page."""
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
