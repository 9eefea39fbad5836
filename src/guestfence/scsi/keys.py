"""fence_scsi's reservation keys, derived exactly as fence-agents derives them.

A cluster may mix our fence_scsi with the fence-agents one, so both must
compute the same 8-hex-digit key for a node:

* prefix: the first 4 hex digits of MD5(cluster name), the name being
  ``totem.cluster_name`` from ``corosync-cmapctl``;
* suffix, ``key_value=id`` (fence-agents' default): the node's index in the
  corosync nodelist (``nodelist.node.<i>.name``, else ``.ring<N>_addr``),
  zero-padded to 4 digits. Not the nodeid; indexes shift when a node is
  removed, which is why fence-agents recommends:
* suffix, ``key_value=hash``: the first 4 hex digits of MD5(node name).

Keys are compared in lower case without leading zeros (sg_persist prints
``0x%x``); 0 is not a key.
"""

from __future__ import annotations

import hashlib
import re

from guestfence.errors import ConfigError

MAX_KEY_DIGITS = 16


class ReservationKeyError(ConfigError):
    """A key that cannot be used or derived; the message says why and what is expected."""


def _md5_prefix(text: str) -> str:
    # usedforsecurity=False: a label, not a secret; works on FIPS systems as upstream does
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:4]


def normalise_key(text: str) -> str:
    """'0x00AbC' -> 'abc'. Rejects empty, zero, non-hex and over-long keys."""
    raw = text.strip().lower()
    if raw.startswith("0x"):
        raw = raw[2:]
    if not raw or not re.fullmatch(r"[0-9a-f]+", raw):
        raise ReservationKeyError(
            f"key {text!r}: expected 1 to {MAX_KEY_DIGITS} hexadecimal digits"
        )
    stripped = raw.lstrip("0")
    if not stripped:
        raise ReservationKeyError("key cannot be 0")
    if len(stripped) > MAX_KEY_DIGITS:
        raise ReservationKeyError(f"key {text!r} has more than {MAX_KEY_DIGITS} hexadecimal digits")
    return stripped


def key_int(key: str) -> int:
    return int(normalise_key(key), 16)


def parse_cluster_name(cmap_output: str) -> str:
    """The value of ``totem.cluster_name (str) = NAME`` in corosync-cmapctl output."""
    m = re.search(r"^totem\.cluster_name \(str\) = (.*)$", cmap_output, re.MULTILINE)
    if not m or not m.group(1).strip():
        raise ReservationKeyError(
            "corosync-cmapctl shows no totem.cluster_name; is corosync running?"
        )
    return m.group(1).strip()


def node_index(nodelist_output: str, node: str) -> int:
    """The nodelist index of ``node``: by ``.name``, else by a ``.ringN_addr`` entry."""
    by_name = re.compile(r"^nodelist\.node\.(\d+)\.name \(str\) = (.*)$", re.MULTILINE)
    by_addr = re.compile(r"^nodelist\.node\.(\d+)\.ring\d+_addr \(str\) = (.*)$", re.MULTILINE)
    for pattern in (by_name, by_addr):
        for m in pattern.finditer(nodelist_output):
            if m.group(2).strip() == node:
                return int(m.group(1))
    raise ReservationKeyError(
        f"unable to parse output of corosync-cmapctl or node {node!r} does not exist in the "
        "corosync nodelist"
    )


def derive_key(cluster_name: str, node: str, method: str = "id",
               nodelist_output: str = "") -> str:
    """The node's key as fence-agents computes it (method 'id' needs the nodelist output)."""
    prefix = _md5_prefix(cluster_name)
    if method == "hash":
        suffix = _md5_prefix(node)
    elif method == "id":
        suffix = f"{node_index(nodelist_output, node):04d}"
    else:
        raise ReservationKeyError(f"key_value={method!r}: expected id or hash")
    return normalise_key(prefix + suffix)
