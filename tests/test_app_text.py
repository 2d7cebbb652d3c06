"""User text as typed: what the escaping helpers make of hostile strings, checked against markdown-it."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt

from app import text

HOSTILE = [
    '<img src=x onerror="alert(1)">',
    "[click](http://evil.example)",
    "**bold** _it_ `code` # head",
    "$$x^2$$ | a | b |",
    "a\\b & c > d",
]


@pytest.mark.parametrize("typed", HOSTILE)
def test_markdown_shows_the_text_as_typed(typed):
    rendered = MarkdownIt("commonmark").render(text.md(typed))
    assert "<img" not in rendered and "<a " not in rendered and "<strong>" not in rendered
    assert "<code>" not in rendered and "<h1>" not in rendered and "<em>" not in rendered
    shown = html.unescape(re.sub(r"</?p>\n?", "", rendered)).strip()
    assert shown == typed


def test_plot_labels_escape_tags_only():
    assert text.plot("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"


def test_public_messages_lose_server_paths(tmp_path):
    work = tmp_path / "capnet-ft-abc" / "data"
    message = f"{work}/img0.png: corrupt; see /tmp/gradio/1234abcd/photo 1.png and /var/tmp/x/y.csv"
    out = text.public(message, work)
    assert out.startswith("img0.png: corrupt") and "/tmp" not in out and "/var" not in out
    assert "y.csv" in out
