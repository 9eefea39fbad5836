"""Metadata XML in the element order fence-agents' metadata.rng requires.

The layout (tabs, self-closing tags with a space) follows the C fence_virt
clients so that our fence_xvm/fence_virt output can be compared with theirs
byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr


@dataclass(frozen=True)
class MetaParam:
    name: str
    getopt: str
    shortdesc: str
    content: str = "string"
    default: str | None = None
    required: bool = False
    deprecated: bool = False
    obsoletes: str | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetaAction:
    name: str
    on_target: bool = False
    automatic: bool | None = None


@dataclass(frozen=True)
class AgentMetadata:
    name: str
    shortdesc: str
    longdesc: str
    vendor_url: str
    params: Sequence[MetaParam]
    actions: Sequence[MetaAction]
    symlinks: Sequence[tuple[str, str]] = field(default_factory=tuple)


def render_metadata(meta: AgentMetadata) -> str:
    out = ['<?xml version="1.0" ?>']
    out.append(
        f"<resource-agent name={quoteattr(meta.name)} shortdesc={quoteattr(meta.shortdesc)}>"
    )
    for link, desc in meta.symlinks:
        out.append(f"<symlink name={quoteattr(link)} shortdesc={quoteattr(desc)}/>")
    out.append(f"<longdesc>{escape(meta.longdesc)}</longdesc>")
    out.append(f"<vendor-url>{escape(meta.vendor_url)}</vendor-url>")
    out.append("<parameters>")
    for p in meta.params:
        attrs = f'name={quoteattr(p.name)} unique="0" required="{int(p.required)}"'
        if p.obsoletes:
            attrs += f" obsoletes={quoteattr(p.obsoletes)}"
        if p.deprecated:
            attrs += ' deprecated="1"'
        out.append(f"\t<parameter {attrs}>")
        out.append(f"\t\t<getopt mixed={quoteattr(p.getopt)} />")
        content = f"type={quoteattr(p.content)}"
        if p.default is not None:
            content += f" default={quoteattr(p.default)}"
        if p.options:
            out.append(f"\t\t<content {content}>")
            out.extend(f"\t\t\t<option value={quoteattr(o)} />" for o in p.options)
            out.append("\t\t</content>")
        else:
            out.append(f"\t\t<content {content} />")
        out.append(f'\t\t<shortdesc lang="en">{escape(p.shortdesc)}</shortdesc>')
        out.append("\t</parameter>")
    out.append("</parameters>")
    out.append("<actions>")
    for a in meta.actions:
        attrs = f"name={quoteattr(a.name)}"
        if a.on_target:
            attrs += ' on_target="1"'
        if a.automatic is not None:
            attrs += f' automatic="{int(a.automatic)}"'
        out.append(f"\t<action {attrs} />")
    out.append("</actions>")
    out.append("</resource-agent>")
    return "\n".join(out) + "\n"
