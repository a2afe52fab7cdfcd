"""HTML (as in StackExchange posts) to readable plain text, with the standard library only.

:func:`html_to_text` keeps the structure a reader needs and drops the markup:

- Paragraphs and other blocks (``p``, ``div``, headings, ``blockquote``, lists, tables, ``hr``)
  are separated by a blank line; ``<br>`` is a line break. Elsewhere, runs of ASCII whitespace
  collapse to one space, as a browser shows them.
- ``<pre>`` blocks keep their text verbatim inside a fence (a line of three backticks before and
  after); inline ``<code>`` is wrapped in single backticks.
- List items start with ``"- "`` (``"1. "``, ``"2. "``, ... in ``<ol>``), indented two spaces per
  nesting level, one item per line; table rows are one line each with cells joined by ``" | "``.
- Block quotes are prefixed with ``"> "``; images become ``"[image: <alt>]"`` (``"[image]"``
  without alt text); link text is kept, the address dropped.
- Character references are unescaped (``&lt;`` -> ``<``, ``&amp;`` -> ``&``); comments,
  ``script`` and ``style`` content are dropped; every other tag is removed, keeping its text.
  Text outside tags, LaTeX such as ``$x^2$`` included, is kept as it is.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_BLOCKS = frozenset(
    (
        *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption"),
        *("figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main"),
        *("nav", "ol", "p", "pre", "section", "table", "tbody", "tfoot", "thead", "tr", "ul"),
    )
)
_HIDDEN = frozenset(("script", "style"))
_SPACE = re.compile(r"[ \t\n\r\f]+")


class _Container:
    """Finished blocks (text, run) of a document or block quote, and the open paragraph.

    A run is a list or a table (its number; 0: neither): blocks of one run are its items or
    rows, one per line.
    """

    def __init__(self) -> None:
        self.blocks: list[tuple[str, int]] = []
        self.line: list[str] = []

    def text(self) -> str:
        """The blocks joined by a blank line, those of one run by a line break."""
        parts: list[str] = []
        previous_run = 0
        for text, run in self.blocks:
            if parts:
                parts.append("\n" if run and run == previous_run else "\n\n")
            parts.append(text)
            previous_run = run
        return "".join(parts)


class _HtmlText(HTMLParser):
    """The parser behind :func:`html_to_text` (one use per instance)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._stack = [_Container()]
        self._lists: list[list[int]] = []  # per open list: [next number] (ol) or [] (ul)
        self._item_prefix: str | None = None  # prefix of the next block of the open list item
        self._item_indent = ""  # indent of later blocks of the open list item
        self._pre: list[str] | None = None
        self._hidden = 0
        self._first_cell = True
        self._runs = 0  # lists and tables opened so far
        self._list_run = 0
        self._table_run = 0

    # Blocks.

    def _add_block(self, text: str, *, run: int = 0) -> None:
        """Append a finished block to the innermost container, with the list item's prefix."""
        if self._lists:
            run = self._list_run
            lines = text.split("\n")
            if self._item_prefix is not None:
                head, self._item_prefix = self._item_prefix, None
            else:
                head = self._item_indent
            text = "\n".join(
                [head + lines[0], *(self._item_indent + line if line else "" for line in lines[1:])]
            )
        self._stack[-1].blocks.append((text, run))

    def _flush(self, *, run: int = 0) -> None:
        """Close the open paragraph: trim each of its lines and keep it if not empty."""
        container = self._stack[-1]
        lines = [line.strip(" ") for line in "".join(container.line).split("\n")]
        container.line = []
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            self._add_block("\n".join(lines), run=run)

    # Parser callbacks.

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
            return
        if self._pre is not None:
            if tag == "br":
                self._pre.append("\n")
            return
        if tag in _BLOCKS:
            self._flush(run=self._table_run if tag == "tr" else 0)
        if tag == "br":
            self._stack[-1].line.append("\n")
        elif tag == "pre":
            self._pre = []
        elif tag == "code":
            self._stack[-1].line.append("`")
        elif tag == "img":
            alt = " ".join((dict(attrs).get("alt") or "").split())
            self._stack[-1].line.append(f"[image: {alt}]" if alt else "[image]")
        elif tag == "hr":
            self._add_block("---")
        elif tag == "blockquote":
            self._stack.append(_Container())
        elif tag in ("ul", "ol"):
            if not self._lists:
                self._runs += 1
                self._list_run = self._runs
            self._lists.append([1] if tag == "ol" else [])
        elif tag == "li" and self._lists:
            numbering = self._lists[-1]
            depth = "  " * (len(self._lists) - 1)
            marker = f"{numbering[0]}. " if numbering else "- "
            if numbering:
                numbering[0] += 1
            self._item_prefix = depth + marker
            self._item_indent = depth + " " * len(marker)
        elif tag == "table":
            self._runs += 1
            self._table_run = self._runs
        elif tag == "tr":
            self._first_cell = True
        elif tag in ("td", "th"):
            if not self._first_cell:
                self._stack[-1].line.append(" | ")
            self._first_cell = False

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "img", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
            return
        if self._pre is not None:
            if tag == "pre":
                code = "".join(self._pre).removeprefix("\n").rstrip()
                self._pre = None
                if code:
                    self._add_block(f"```\n{code}\n```")
            return
        if tag == "code":
            self._stack[-1].line.append("`")
        elif tag in ("td", "th"):
            return  # cells stay on their row's line
        elif tag in _BLOCKS:
            self._flush(run=self._table_run if tag == "tr" else 0)
        if tag == "blockquote" and len(self._stack) > 1:
            quoted = self._stack.pop().text()
            if quoted:
                self._add_block(
                    "\n".join(f"> {line}" if line else ">" for line in quoted.split("\n"))
                )
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
            self._item_prefix = None
            self._item_indent = ""

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        if self._pre is not None:
            self._pre.append(data)
        else:
            self._stack[-1].line.append(_SPACE.sub(" ", data))

    def text(self) -> str:
        """The text of everything fed so far (call after :meth:`close`)."""
        if self._pre is not None:  # an unclosed <pre>
            self.handle_endtag("pre")
        self._flush()
        while len(self._stack) > 1:  # unclosed block quotes
            self.handle_endtag("blockquote")
        return self._stack[0].text()


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML fragment (see the module docstring).

    Args:
      html: an HTML fragment, such as a StackExchange post body.

    Returns:
      The text, without leading or trailing blank lines; ``""`` if there is none.

    Example:
      >>> html_to_text("<p>Use <code>x &lt; 1</code>.</p><pre><code>a = 1\\n</code></pre>")
      'Use `x < 1`.\\n\\n```\\na = 1\\n```'
    """
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text()
