"""Markdown from claws and models, rendered so it can do nothing.

Everything here is hostile text: a memory file a prompt-injected agent wrote,
a model's reply. It is rendered by markdown-it in its ``js-default`` mode
(no raw HTML, links validated: no ``javascript:`` or ``data:``), with
images turned into their alt text — an image URL is how injected output
leaks data to a remote server, since the browser fetches it unasked — and
then sanitised by nh3 (an allowlist of tags and attributes, ``rel`` forced
on links). The CSP (``web/security.py``) is the last line behind both.
"""

from __future__ import annotations

from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup

from appliance.core.textsafe import printable

_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}


def _image_as_text(
    self: RendererHTML,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    return f"[image: {_escape(alt)}]"


def _escape(text: str) -> str:
    return str(Markup.escape(text))


_md = MarkdownIt("js-default")
_md.add_render_rule("image", _image_as_text)


def render_markdown(text: str) -> Markup:
    """Safe HTML for untrusted Markdown; invisible and bidi characters are
    shown as visible escapes first, so text reads as what it is."""
    html = _md.render(printable(text))
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return Markup(clean)  # noqa: S704 - sanitised by nh3 just above
