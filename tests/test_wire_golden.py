"""Golden wire tests: exact reply bytes from ``Handler.handle``, written out by hand.

Every query and every expected reply below is spelled as hex from the RFC 1035 §4.1
layout (RFC 6891 §6.1.2 for OPT, RFC 8914 §2 for the extended error option), one field
per line with a comment, so a change in the bytes on the wire shows up here as a diff
of exactly the field that moved. Name compression: a pointer is ``C0 | offset`` where
the offset counts from the first byte of the header; the question name always starts
at offset 12 (0x0C).

The snapshot is the demo cluster plus tests/data/extra-cluster.yaml, TTL 5, published
once (so the SOA serial is 1).
"""

from __future__ import annotations

import pytest

from clusterdns.config import Config, ListenAddr, PodsMode, SourceSpec
from clusterdns.handler import Handler
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.dump import load_files
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER


def hx(text: str) -> bytes:
    """Hex digits with whitespace and ``# comments`` ignored."""
    digits = "".join(line.split("#", 1)[0] for line in text.splitlines())
    return bytes.fromhex("".join(digits.split()))


@pytest.fixture(scope="module")
def handler() -> Handler:
    config = Config(
        zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
        source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)),
        listen=(ListenAddr("127.0.0.1", 0),),
        pods=PodsMode.INSECURE,
        ttl=5,
    )
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files(config.source.paths).cluster, config)
    return Handler(ref, max_udp_size=1232)


# ------------------------------------------------------------------------------ FORMERR


def test_golden_formerr_for_a_truncated_question_is_the_bare_header(handler: Handler) -> None:
    query = hx("""
        BE EF        # ID
        01 00        # QR=0 OPCODE=0 RD=1
        00 01        # QDCOUNT 1
        00 00 00 00 00 00  # AN, NS, AR 0
        07 65 78 61 6d   # "\\x07exam": the name stops mid-label
    """)
    expected = hx("""
        BE EF        # ID echoed
        81 01        # QR=1 OPCODE=0 AA=0 TC=0 RD=1 | RA=0 Z=0 RCODE=1 FORMERR
        00 00        # QDCOUNT 0: the question could not be read
        00 00 00 00 00 00  # AN, NS, AR 0
    """)
    assert handler.handle(query) == expected


def test_golden_formerr_for_qdcount_2_echoes_the_readable_question(handler: Handler) -> None:
    query = hx("""
        BE F0        # ID
        01 10        # RD=1 CD=1
        00 02        # QDCOUNT 2, but only one question follows
        00 00 00 00 00 00
        03 77 77 77               # "www"
        07 65 78 61 6d 70 6c 65   # "example"
        03 63 6f 6d               # "com"
        00                        # root
        00 01 00 01               # QTYPE A, QCLASS IN
    """)
    expected = hx("""
        BE F0        # ID echoed
        81 11        # QR=1 RD=1 | CD=1 RCODE=1 FORMERR
        00 01        # QDCOUNT 1: the question we could read
        00 00 00 00 00 00
        03 77 77 77 07 65 78 61 6d 70 6c 65 03 63 6f 6d 00   # www.example.com.
        00 01 00 01                                          # A IN
    """)
    assert handler.handle(query) == expected


# ------------------------------------------------------------------------------- NOTIMP


def test_golden_notimp_for_opcode_2_echoes_the_opcode_and_the_question(
        handler: Handler) -> None:
    query = hx("""
        0A 0B        # ID
        10 00        # QR=0 OPCODE=2 (STATUS) RD=0
        00 01 00 00 00 00 00 00
        07 63 6c 75 73 74 65 72   # "cluster"
        05 6c 6f 63 61 6c         # "local"
        00
        00 06 00 01               # SOA IN
    """)
    expected = hx("""
        0A 0B        # ID echoed
        90 04        # QR=1 OPCODE=2 AA=0 RD=0 | RCODE=4 NOTIMP
        00 01 00 00 00 00 00 00   # QD 1, AN 0, NS 0, AR 0 (no OPT: the query had none)
        07 63 6c 75 73 74 65 72 05 6c 6f 63 61 6c 00   # cluster.local.
        00 06 00 01                                    # SOA IN
    """)
    assert handler.handle(query) == expected


# ------------------------------------------------------------------------------ REFUSED


def test_golden_refused_out_of_zone_without_edns_echoes_the_question_byte_for_byte(
        handler: Handler) -> None:
    query = hx("""
        12 34        # ID
        01 00        # RD=1
        00 01 00 00 00 00 00 00
        07 45 78 61 6d 50 6c 65   # "ExamPle" (the 0x20 letter case must survive)
        03 43 4f 4d               # "COM"
        00
        00 01 00 01               # A IN
    """)
    expected = hx("""
        12 34        # ID echoed
        81 05        # QR=1 AA=0 RD=1 | RA=0 RCODE=5 REFUSED
        00 01 00 00 00 00 00 00
        07 45 78 61 6d 50 6c 65 03 43 4f 4d 00   # ExamPle.COM. exactly as asked
        00 01 00 01
    """)
    assert handler.handle(query) == expected


# ----------------------------------------------------------------------------------- TC


def test_golden_tc_for_a_big_answer_over_udp_without_edns_is_header_and_question_only(
        handler: Handler) -> None:
    question = """
        03 62 69 67               # "big"
        06 74 65 61 6d 2d 61      # "team-a"
        03 73 76 63               # "svc"
        07 63 6c 75 73 74 65 72   # "cluster"
        05 6c 6f 63 61 6c         # "local"
        00
        00 01 00 01               # A IN
    """
    query = hx("""
        77 77        # ID
        01 00        # RD=1
        00 01 00 00 00 00 00 00
    """ + question)
    expected = hx("""
        77 77        # ID echoed
        87 00        # QR=1 OPCODE=0 AA=1 TC=1 RD=1 | RA=0 RCODE=0
        00 01        # QDCOUNT 1: the question is kept
        00 00        # ANCOUNT 0: the 120-record RRset is dropped whole, never cut
        00 00 00 00
    """ + question)
    assert handler.handle(query, tcp=False) == expected


# --------------------------------------------------------------------------------- EDNS


def test_golden_edns_reply_has_the_answer_then_our_opt_with_payload_1232(
        handler: Handler) -> None:
    question = """
        0b 64 6e 73 2d 76 65 72 73 69 6f 6e   # "dns-version" at offset 12 (0x0C)
        07 63 6c 75 73 74 65 72               # "cluster"
        05 6c 6f 63 61 6c                     # "local"
        00
        00 10 00 01                           # TXT IN
    """
    query = hx("""
        42 42        # ID
        01 00        # RD=1
        00 01 00 00 00 00 00 01   # QD 1, AN 0, NS 0, AR 1 (the OPT)
    """ + question + """
        00           # OPT owner: root
        00 29        # TYPE 41 OPT
        10 00        # CLASS = requestor's UDP payload 4096
        00 00 00 00  # EXTENDED-RCODE 0, VERSION 0, DO=0, Z=0
        00 00        # RDLENGTH 0
    """)
    expected = hx("""
        42 42        # ID echoed
        85 00        # QR=1 AA=1 RD=1 | RA=0 RCODE=0
        00 01 00 01 00 00 00 01   # QD 1, AN 1, NS 0, AR 1
    """ + question + """
        c0 0c        # owner: pointer to the question name at offset 12
        00 10 00 01  # TXT IN
        00 00 00 05  # TTL 5
        00 06        # RDLENGTH 6
        05 31 2e 31 2e 30   # <character-string> "1.1.0"
        00           # OPT owner: root
        00 29        # TYPE 41 OPT
        04 d0        # CLASS = our UDP payload 1232 (not the client's 4096)
        00 00 00 00  # EXTENDED-RCODE 0, VERSION 0, DO=0, Z=0
        00 00        # RDLENGTH 0: no options on a positive answer
    """)
    assert handler.handle(query) == expected


def test_golden_nxdomain_with_edns_has_a_compressed_soa_and_an_extended_error(
        handler: Handler) -> None:
    text = b"nope.cluster.local does not exist"
    assert len(text) == 0x21
    question = """
        04 6e 6f 70 65            # "nope" at offset 12 (0x0C)
        07 63 6c 75 73 74 65 72   # "cluster" at offset 17 (0x11)
        05 6c 6f 63 61 6c         # "local" at offset 25 (0x19)
        00                        # root at offset 31
        00 01 00 01               # A IN (offsets 32-35)
    """
    opt_query = """
        00 00 29 04 d0 00 00 00 00 00 00   # OPT: root, type 41, payload 1232, v0, no options
    """
    query = hx("""
        53 53        # ID
        01 00        # RD=1
        00 01 00 00 00 00 00 01
    """ + question + opt_query)
    expected = hx("""
        53 53        # ID echoed
        85 03        # QR=1 AA=1 RD=1 | RA=0 RCODE=3 NXDOMAIN
        00 01 00 00 00 01 00 01   # QD 1, AN 0, NS 1 (the SOA), AR 1 (the OPT)
    """ + question + """
        c0 11        # SOA owner cluster.local: pointer to offset 17
        00 06 00 01  # SOA IN
        00 00 00 05  # TTL min(5, minimum 5) = 5
        00 2a        # RDLENGTH 42 = 9 + 13 + 20
        02 6e 73 03 64 6e 73 c0 11            # MNAME ns.dns + pointer to cluster.local
        0a 68 6f 73 74 6d 61 73 74 65 72 c0 11  # RNAME hostmaster + pointer
        00 00 00 01  # SERIAL 1 (the first published snapshot)
        00 00 1c 20  # REFRESH 7200
        00 00 07 08  # RETRY 1800
        00 01 51 80  # EXPIRE 86400
        00 00 00 05  # MINIMUM 5
        00           # OPT owner: root
        00 29        # TYPE 41 OPT
        04 d0        # CLASS = our UDP payload 1232
        00 00 00 00  # EXTENDED-RCODE 0, VERSION 0, DO=0, Z=0
        00 27        # RDLENGTH 39 = 4 + 35
        00 0f        # OPTION-CODE 15 (RFC 8914 extended DNS error)
        00 23        # OPTION-LENGTH 35 = 2 + 33
        00 00        # INFO-CODE 0 (Other)
    """) + text      # EXTRA-TEXT, UTF-8, not NUL-terminated
    assert handler.handle(query) == expected


def test_golden_replies_are_the_same_over_tcp_when_they_fit(handler: Handler) -> None:
    query = hx("""
        42 43 01 00 00 01 00 00 00 00 00 00
        0b 64 6e 73 2d 76 65 72 73 69 6f 6e 07 63 6c 75 73 74 65 72 05 6c 6f 63 61 6c 00
        00 10 00 01   # dns-version.cluster.local. TXT IN, no EDNS
    """)
    expected = hx("""
        42 43 85 00 00 01 00 01 00 00 00 00   # QR AA RD, QD 1 AN 1, no OPT
        0b 64 6e 73 2d 76 65 72 73 69 6f 6e 07 63 6c 75 73 74 65 72 05 6c 6f 63 61 6c 00
        00 10 00 01
        c0 0c 00 10 00 01 00 00 00 05 00 06 05 31 2e 31 2e 30   # TXT "1.1.0", TTL 5
    """)
    assert handler.handle(query, tcp=False) == expected
    assert handler.handle(query, tcp=True) == expected
