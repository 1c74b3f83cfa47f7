"""Name helpers shared by every layer: normal form, labels, reverse names, dashed IPs.

Names inside clusterdns are lower-case text without the trailing dot
(``httpenv.default.svc.cluster.local``); the root is the empty string. Only ``wire``
deals with the query's own spelling.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def normalise(name: str) -> str:
    """Lower-case, strip surrounding whitespace and the trailing dot."""
    return name.strip().rstrip(".").lower()


def is_dns_label(text: str) -> bool:
    """An RFC 1123 label, as Kubernetes requires for namespace and service names."""
    return bool(_LABEL.match(text))


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def is_subdomain(name: str, zone: str) -> bool:
    """True when ``name`` is ``zone`` or below it (both in normal form)."""
    if not zone:
        return True
    return name == zone or name.endswith("." + zone)


def relative(name: str, zone: str) -> str:
    """The part of ``name`` left of ``zone`` ("" for the apex)."""
    return "" if name == zone else name[: -len(zone) - 1]


def ancestors(name: str, zone: str) -> list[str]:
    """Every name strictly between ``zone`` and ``name`` plus ``name`` itself."""
    out = [name]
    while name != zone and "." in name:
        name = name.split(".", 1)[1]
        if not is_subdomain(name, zone):
            break
        out.append(name)
    return out


def is_reverse_zone(zone: str) -> bool:
    return is_subdomain(zone, "in-addr.arpa") or is_subdomain(zone, "ip6.arpa")


def reverse_name(ip: str) -> str:
    """``10.96.0.1`` -> ``1.0.96.10.in-addr.arpa``; IPv6 -> nibble form under ip6.arpa."""
    return ipaddress.ip_address(ip).reverse_pointer


_REVERSE_V4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){4}in-addr\.arpa")
_REVERSE_V6 = re.compile(r"(?:[0-9a-f]\.){32}ip6\.arpa")
_DASHED_V4 = re.compile(r"[0-9]{1,3}(?:-[0-9]{1,3}){3}")
_DASHED_V6 = re.compile(r"[0-9a-f-]{2,39}")


def ip_from_reverse(name: str) -> str | None:
    """The address a complete reverse name stands for, or None if it is not one.

    Only ASCII digits, in canonical form (no leading zeros), and lower-case nibbles
    count: anything else (other Unicode digits, a zone index...) is not a reverse name.
    """
    if _REVERSE_V4.fullmatch(name):
        return ".".join(reversed(name.split(".")[:4]))
    if _REVERSE_V6.fullmatch(name):
        hexed = "".join(reversed(name.split(".")[:32]))
        return str(ipaddress.IPv6Address(int(hexed, 16)))
    return None


def dashed_ip(ip: str) -> str:
    """The endpoint/pod label for an IP: dots or colons become dashes.

    IPv6 ``fd00::1`` -> ``fd00--1``; a leading or trailing dash gets a ``0`` so the
    label stays valid (``::1`` -> ``0--1``).
    """
    if ":" not in ip:
        return ip.replace(".", "-")
    label = ip.lower().replace(":", "-")
    if label.startswith("-"):
        label = "0" + label
    if label.endswith("-"):
        label = label + "0"
    return label


def ip_from_dashed(label: str) -> str | None:
    """Inverse of :func:`dashed_ip` for pod names; None if the label is not an IP.

    Only ASCII digits, lower-case hex digits and dashes may appear: ``ipaddress`` would
    also take an IPv6 zone index (``fe80--1%25``), which no record can carry.
    """
    if _DASHED_V4.fullmatch(label):
        try:
            return str(ipaddress.IPv4Address(label.replace("-", ".")))
        except ValueError:
            return None
    if not _DASHED_V6.fullmatch(label):
        return None
    try:
        return str(ipaddress.IPv6Address(label.replace("-", ":")))
    except ValueError:
        return None


# A dotted quad already in canonical form (no leading zeros, each octet <= 255): the
# common case, accepted without the ipaddress module (~10x faster on a 100k-endpoint list).
_CANONICAL_V4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def canonical_ip(text: str) -> str | None:
    """Canonical text for an IP address, or None if ``text`` is not one."""
    if _CANONICAL_V4.fullmatch(text):
        return text
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None  # a zone index (fe80::1%eth0) means nothing outside one host
    return str(ip)
