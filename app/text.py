"""User text shown as typed: escaped for Gradio's Markdown (which also renders HTML) and for plotly labels."""

from __future__ import annotations

import html
import re
from pathlib import Path

# Every ASCII punctuation character that Markdown (or Gradio's $$ LaTeX) could read as syntax.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>$])")


def md(text: object) -> str:
    """``text`` for a gr.Markdown: HTML entities first, then Markdown's syntax characters backslashed."""
    escaped = html.escape(str(text), quote=False)
    return _MARKDOWN.sub(r"\\\1", escaped).replace("\n", " ")


def plot(text: object) -> str:
    """``text`` for a plotly title, label or hover text, which understand a few HTML tags and entities."""
    return html.escape(str(text), quote=False)


def error(text: str) -> str:
    """A one-line warning in the app's red, ``text`` already escaped by the caller where it is user text."""
    return f"<span class='error'>⚠ {text}</span>"


def public(message: str, *folders: str | Path) -> str:
    """``message`` with the server's folders taken out: a user sees their own file names, never our paths."""
    for folder in folders:
        message = message.replace(f"{folder}/", "").replace(str(folder), "")
    return _TEMP_PATH.sub(lambda m: Path(m.group(0)).name, message)


# Anything that still looks like an absolute path into a temp or home folder is cut to its last part.
_TEMP_PATH = re.compile(r"/(?:tmp|var|home|root|private|work)(?:/[^\s'\":,;()]+)+")
