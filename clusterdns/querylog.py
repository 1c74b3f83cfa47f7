"""The query log: one line per answered query on stdout, in CoreDNS ``log`` format.

This module exists so that people used to CoreDNS's ``log`` plugin (and the log
pipelines built on it) get the same lines, field for field, from the same observer hook
the metrics use. The default CoreDNS format is

    [INFO] {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}"
    {rcode} {>rflags} {rsize} {duration}

(on one line), e.g. ``[INFO] 127.0.0.1:55139 - 4127 "A IN httpenv.default.svc.cluster.local.
udp 74 false 1232" NOERROR qr,aa,rd 140 0.000203s``: the name is lower-cased with a
closing dot, ``bufsize`` is 65535 over TCP and at least 512 over UDP, the duration is in
seconds. Queries that get no reply are not logged. Errors still go to stderr through
``logging``; this stream is only for query lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from clusterdns.metrics import question_end, rcode_name, type_name

CLASS_NAMES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_SPECIAL = frozenset(b'.\\"();@$ ')
_FLAGS = ((2, 0x80, "qr"), (2, 0x04, "aa"), (2, 0x02, "tc"), (2, 0x01, "rd"),
          (3, 0x80, "ra"), (3, 0x40, "z"), (3, 0x20, "ad"), (3, 0x10, "cd"))


def qname_text(data: bytes, end: int) -> str:
    """The question name as presentation text: lower case, closing dot, escapes."""
    out: list[str] = []
    i = 12
    while i < end - 1:
        length = data[i]
        label = data[i + 1:i + 1 + length].lower()
        text = []
        for b in label:
            if b in _SPECIAL:
                text.append("\\" + chr(b))
            elif 0x21 <= b <= 0x7E:
                text.append(chr(b))
            else:
                text.append(f"\\{b:03d}")
        out.append("".join(text))
        i += length + 1
    return ".".join(out) + "."


def _skip_name(data: bytes, i: int) -> int:
    while True:
        length = data[i]
        if length & 0xC0 == 0xC0:
            return i + 2
        if length == 0:
            return i + 1
        i += length + 1


def _find_opt(data: bytes, start: int) -> int:
    """Offset of the OPT record's TYPE field in a message, -1 if there is none.

    ``start`` is the offset just past the question section.
    """
    count = ((data[6] << 8 | data[7]) + (data[8] << 8 | data[9]) + (data[10] << 8 | data[11]))
    i = start
    try:
        for _ in range(count):
            i = _skip_name(data, i)
            if data[i] == 0 and data[i + 1] == 41:
                return i
            i += 10 + (data[i + 8] << 8 | data[i + 9])
    except IndexError:
        return -1
    return -1


def _duration(seconds: float) -> str:
    ns = max(int(seconds * 1e9), 0)
    whole, frac = divmod(ns, 1_000_000_000)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return text + "s"


def format_line(query: bytes, reply: bytes, tcp: bool, peer: Any, seconds: float) -> str:
    """The CoreDNS common-log-format line for one query and its reply (with ``[INFO]``)."""
    host, port = (str(peer[0]), str(peer[1])) if peer else ("-", "-")
    remote = f"[{host}]" if ":" in host else host
    qid = query[0] << 8 | query[1] if len(query) >= 2 else 0
    end = question_end(query)
    if end > 0:
        name = qname_text(query, end)
        qtype = type_name(query[end] << 8 | query[end + 1])
        qclass_code = query[end + 2] << 8 | query[end + 3]
        qclass = CLASS_NAMES.get(qclass_code) or f"CLASS{qclass_code}"
        opt = _find_opt(query, end + 4)
    else:
        name, qtype, qclass, opt = ".", "TYPE0", "CLASS0", -1
    do = False
    bufsize = 0
    if opt >= 0 and opt + 8 <= len(query):
        bufsize = query[opt + 2] << 8 | query[opt + 3]
        do = bool(query[opt + 6] & 0x80)
    if tcp:
        bufsize = 65535
    elif bufsize < 512:
        bufsize = 512
    rcode = reply[3] & 0x0F if len(reply) >= 12 else 2
    if len(reply) >= 12:
        rend = question_end(reply) + 4 if reply[4:6] != b"\x00\x00" else 12
        ropt = _find_opt(reply, rend) if rend >= 12 and reply[10:12] != b"\x00\x00" else -1
        if ropt >= 0 and ropt + 5 <= len(reply):
            rcode |= reply[ropt + 4] << 4
    flags = ",".join(name_ for byte, bit, name_ in _FLAGS
                     if len(reply) > byte and reply[byte] & bit)
    proto = "tcp" if tcp else "udp"
    return (f'[INFO] {remote}:{port} - {qid} "{qtype} {qclass} {name} {proto} {len(query)} '
            f'{"true" if do else "false"} {bufsize}" {rcode_name(rcode)} {flags} '
            f"{len(reply)} {_duration(seconds)}")


class QueryLog:
    """The observer that writes one line per answered query."""

    def __init__(self, stream: Callable[[], TextIO] = lambda: sys.stdout) -> None:
        self._stream = stream  # looked up per line, so a redirected stdout is honoured

    def observe(self, query: bytes, reply: bytes | None, tcp: bool, peer: Any,
                start: float) -> None:
        if reply is None:
            return
        elapsed = time.perf_counter() - start
        try:
            line = format_line(query, reply, tcp, peer, elapsed)
        except IndexError:  # a reply to a malformed query we could not fully read
            line = f"[INFO] {peer!r} - malformed query of {len(query)} bytes"
        out = self._stream()
        out.write(line + "\n")
        out.flush()
