"""Narrative (``xhtml``) checks: txt-1 and txt-2, which R4 expresses as ``htmlChecks()``.

The XHTML is parsed with the standard library's expat binding. Rules (R4
narrative.html, 2.4.0.x "Narrative"): the root is a ``div`` in the XHTML
namespace; only the basic HTML formatting elements and attributes are allowed
(no scripts, forms, objects, frames, head/body, event attributes ...); no DTD
or entity declarations (XXE protection) and only the XML predefined entities
and character references; some non-whitespace content (txt-2).
"""

from __future__ import annotations

from xml.parsers import expat

XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_NS = "http://www.w3.org/XML/1998/namespace"

ALLOWED_ELEMENTS = frozenset(
    {
        "p",
        "br",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "a",
        "span",
        "b",
        "em",
        "i",
        "strong",
        "small",
        "big",
        "tt",
        "dfn",
        "q",
        "var",
        "abbr",
        "acronym",
        "cite",
        "blockquote",
        "hr",
        "address",
        "bdo",
        "kbd",
        "sub",
        "sup",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "pre",
        "table",
        "caption",
        "colgroup",
        "col",
        "thead",
        "tr",
        "tfoot",
        "tbody",
        "th",
        "td",
        "code",
        "samp",
        "img",
        "map",
        "area",
        "ins",
        "del",
        "s",
        "u",
        "strike",
        "center",
        "font",
    }
)

ALLOWED_ATTRIBUTES = frozenset(
    {
        "title",
        "style",
        "class",
        "id",
        "lang",
        "dir",
        "accesskey",
        "tabindex",
        "span",
        "width",
        "align",
        "valign",
        "char",
        "charoff",
        "abbr",
        "axis",
        "headers",
        "scope",
        "rowspan",
        "colspan",
    }
)

ALLOWED_ELEMENT_ATTRIBUTES = frozenset(
    {
        "a.href",
        "a.name",
        "a.title",
        "a.type",
        "a.rel",
        "a.rev",
        "a.hreflang",
        "a.charset",
        "a.shape",
        "a.coords",
        "a.target",
        "img.src",
        "img.alt",
        "img.title",
        "img.height",
        "img.width",
        "img.border",
        "img.usemap",
        "img.longdesc",
        "img.hspace",
        "img.vspace",
        "img.align",
        "img.ismap",
        "blockquote.cite",
        "q.cite",
        "ins.cite",
        "ins.datetime",
        "del.cite",
        "del.datetime",
        "table.summary",
        "table.width",
        "table.border",
        "table.frame",
        "table.rules",
        "table.cellspacing",
        "table.cellpadding",
        "table.bgcolor",
        "pre.space",
        "pre.width",
        "td.nowrap",
        "td.bgcolor",
        "th.nowrap",
        "th.bgcolor",
        "tr.bgcolor",
        "ol.start",
        "ol.type",
        "ol.compact",
        "ul.type",
        "ul.compact",
        "li.value",
        "li.type",
        "map.name",
        "area.href",
        "area.alt",
        "area.shape",
        "area.coords",
        "area.nohref",
        "area.title",
        "col.bgcolor",
        "font.size",
        "font.color",
        "font.face",
        "hr.size",
        "hr.noshade",
    }
)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.depth = 0
        self.has_text = False
        self.has_img = False

    def start(self, name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        if self.depth == 0:
            if ns != XHTML_NS:
                self.problems.append(
                    "the narrative root must be in the XHTML namespace (http://www.w3.org/1999/xhtml)"
                )
            if local != "div":
                self.problems.append("the narrative root element must be a div")
        self.depth += 1
        if ns != XHTML_NS:
            if self.depth > 1:
                self.problems.append(f"element '{local}' is not in the XHTML namespace")
            return
        if local not in ALLOWED_ELEMENTS:
            self.problems.append(f"element '{local}' is not allowed in a narrative (txt-1)")
        if local == "img":
            self.has_img = True
        for attr in attrs:
            ans, _, alocal = attr.rpartition(" ")
            if ans == XML_NS and alocal in ("lang", "space"):
                continue
            if ans and ans != XHTML_NS:
                self.problems.append(
                    f"attribute '{alocal}' on '{local}' is not allowed in a narrative (txt-1)"
                )
                continue
            if alocal in ALLOWED_ATTRIBUTES or f"{local}.{alocal}" in ALLOWED_ELEMENT_ATTRIBUTES:
                continue
            self.problems.append(f"attribute '{alocal}' on '{local}' is not allowed in a narrative (txt-1)")

    def end(self, name: str) -> None:
        self.depth -= 1

    def text(self, data: str) -> None:
        if not self.has_text and data.strip():
            self.has_text = True

    def doctype(self, *args: object) -> None:
        self.problems.append("a DOCTYPE declaration is not allowed in a narrative (XXE protection)")

    def entity_decl(self, *args: object) -> None:
        self.problems.append("entity declarations are not allowed in a narrative")


def check_xhtml(value: str) -> list[str]:
    """Return the problems found in the narrative ``value`` (empty when it is fine)."""
    chk = _Checker()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = chk.start
    parser.EndElementHandler = chk.end
    parser.CharacterDataHandler = chk.text
    parser.StartDoctypeDeclHandler = chk.doctype
    parser.EntityDeclHandler = chk.entity_decl
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(value, True)
    except expat.ExpatError as ex:
        reason = expat.ErrorString(ex.code) if ex.code is not None else "malformed"
        return [*chk.problems, f"the narrative is not well-formed XHTML ({reason}, line {ex.lineno})"]
    if not chk.has_text and not chk.has_img:
        chk.problems.append("the narrative SHALL have some non-whitespace content (txt-2)")
    return chk.problems
