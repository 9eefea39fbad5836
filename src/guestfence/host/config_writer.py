"""Writing fence_virt.conf: edit the tree `config.parse_tree` reads, then print it back.

Editing the parsed tree rather than generating a file from scratch keeps every
block the editor does not know about (groups, per-cluster keys, settings that
other parts of guestfence add), as `fence_virtd -c` does. Comments are not
kept (the parser drops them, as fence_virtd's does); the caller keeps a copy
of the old file.

The format has no escapes: a value cannot contain a double quote and cannot
be empty, so `set_key` refuses such values instead of writing a file that
would not parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from guestfence.errors import ConfigError
from guestfence.host.config import Node


def check_value(key: str, value: str) -> None:
    """Raise ConfigError unless `value` can be written as a fence_virt.conf value."""
    if not value:
        raise ConfigError(f"{key}: an empty value cannot be written (the format needs at "
                          "least one character)")
    if '"' in value or "\0" in value:
        raise ConfigError(f"{key}: {value!r} contains a double quote or NUL, which "
                          "fence_virt.conf cannot express")


def _is(node: Node, name: str, *, block: bool) -> bool:
    return node.is_block == block and node.name.lower() == name.lower()


def _last_index(nodes: Sequence[Node], name: str, *, block: bool) -> int | None:
    found = None
    for index, node in enumerate(nodes):
        if _is(node, name, block=block):
            found = index  # the last one is the one the reader uses
    return found


def set_key(tree: Sequence[Node], path: Sequence[str], key: str,
            value: str | None) -> tuple[Node, ...]:
    """A copy of `tree` where block `path` (created if missing) has `key = value`.

    Every earlier copy of the key in that block is dropped, so the file says
    one thing; the key keeps the place of its last copy. ``value=None``
    removes the key.
    """
    if not path:
        if value is not None:
            check_value(key, value)
        kept: list[Node] = []
        placed = False
        last = _last_index(tree, key, block=False)
        for index, node in enumerate(tree):
            if not _is(node, key, block=False):
                kept.append(node)
            elif index == last and value is not None:
                kept.append(replace(node, value=value))
                placed = True
        if value is not None and not placed:
            kept.append(Node(key, value, 0, ()))
        return tuple(kept)
    head, rest = path[0], path[1:]
    at = _last_index(tree, head, block=True)
    if at is None:
        if value is None:
            return tuple(tree)
        return (*tree, Node(head, None, 0, set_key((), rest, key, value), is_block=True))
    block = tree[at]
    changed = replace(block, children=set_key(block.children, rest, key, value))
    return (*tree[:at], changed, *tree[at + 1:])


def find_block(tree: Sequence[Node], path: Sequence[str]) -> Node | None:
    """The block at `path` the reader would use (the last one of each name), or None."""
    block = None
    nodes: Sequence[Node] = tree
    for name in path:
        index = _last_index(nodes, name, block=True)
        if index is None:
            return None
        block = nodes[index]
        nodes = block.children
    return block


def get_key(tree: Sequence[Node], path: Sequence[str], key: str) -> str | None:
    """The value the reader would use for `key` in block `path`, or None."""
    block = find_block(tree, path)
    nodes = tree if not path else (block.children if block else ())
    index = _last_index(nodes, key, block=False)
    return None if index is None else nodes[index].value


def render_tree(tree: Sequence[Node], indent: str = "") -> str:
    """fence_virt.conf text for `tree`: one item per line, blocks indented by a tab."""
    lines: list[str] = []
    for node in tree:
        head = f'{node.name} = "{node.value}"' if node.value is not None else node.name
        if not node.is_block:
            lines.append(f"{indent}{head};\n")
            continue
        lines.append(f"{indent}{head} {{\n")
        lines.append(render_tree(node.children, indent + "\t"))
        lines.append(f"{indent}}}\n")
        if not indent:
            lines.append("\n")  # a blank line between top-level blocks
    return "".join(lines)
