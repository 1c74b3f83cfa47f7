"""A small run of the packet fuzzer (``bench/fuzz.py``) against a real ``clusterdns serve``.

The fuzzer's full run sends a million packets and takes minutes; this one sends 20,000
(5% of them as TCP messages: pipelines, pieces, lying length prefixes, zero lengths,
churn) so that the suite catches a transport rule broken by a change, a traceback the
odd packets provoke, or a server that stops answering. The server serves the demo's
settings and dump plus ``tests/data/extra-cluster.yaml``, whose 120-pod headless service
makes replies that must be truncated, so the size rule meets more than small answers.
One run is shared by the tests below; each states one thing it must have shown. On
failure the report's examples give the offending packets in hex.
"""

from __future__ import annotations

import math
import random

import dns.message
import dns.rrset
import pytest

from bench.fuzz import (
    RULES,
    FuzzReport,
    PacketGenerator,
    Tally,
    TcpFuzzer,
    frame,
    run_fuzz,
    server_messages,
    udp_limit,
)

PACKETS = 20_000
SEED = 20_000
TCP_SHARE = 0.05
SOURCE = "file:config/demo-cluster.yaml,tests/data/extra-cluster.yaml"


@pytest.fixture(scope="module")
def report() -> FuzzReport:
    """One run for the whole module (about 5 s)."""
    return run_fuzz(PACKETS, seed=SEED, tcp_share=TCP_SHARE, probe_every=5_000, source=SOURCE)


def test_twenty_thousand_mutated_packets_break_no_transport_rule(report: FuzzReport) -> None:
    assert report.packets >= PACKETS
    assert set(RULES) <= set(report.violations)
    broken = {rule: report.examples.get(rule, []) for rule, count in report.violations.items()
              if count}
    assert not broken, broken


def test_some_of_them_go_over_tcp_in_every_shape(report: FuzzReport) -> None:
    assert report.tcp_messages >= PACKETS * TCP_SHARE
    assert set(report.tcp_scenarios) >= {"single", "pipeline", "pieces", "long prefix",
                                         "short prefix", "zero length", "churn"}
    assert report.tcp_errors == 0, report.tcp_error_examples


def test_the_server_logs_no_error_or_traceback(report: FuzzReport) -> None:
    assert report.log_errors == 0, report.log_examples


def test_the_server_answers_no_query_servfail(report: FuzzReport) -> None:
    assert report.servfail == 0, report.servfail_examples


def test_every_liveness_probe_gets_the_right_answer_and_the_server_keeps_running(
        report: FuzzReport) -> None:
    assert report.liveness_probes >= 10  # start, every 5,000 packets, end; UDP and TCP
    assert report.liveness_failures == 0, report.liveness_examples
    assert report.server_alive


def test_almost_every_query_that_needs_a_reply_gets_one(report: FuzzReport) -> None:
    # A few may be lost at a busy machine's socket buffers; a handler that drops
    # queries silently loses far more.
    assert report.replies > PACKETS * 0.8
    assert report.no_reply <= PACKETS // 200, report.no_reply_examples


def test_the_size_rule_meets_replies_that_had_to_be_truncated(report: FuzzReport) -> None:
    # big.team-a (120 pods) asked over UDP: its A RRset alone is 1,966 bytes.
    assert report.truncated > 0


def test_no_udp_reply_amplifies_its_query_beyond_what_the_size_limits_allow(
        report: FuzzReport) -> None:
    assert report.replies and math.isfinite(report.max_amplification)
    assert math.isfinite(report.tcp_max_amplification)
    # The shortest query is 17 bytes (root name), 28 with an OPT record; its reply may
    # have 512 bytes, 1232 with EDNS: 44x at the very most.
    assert report.max_amplification <= max(512 / 17, 1232 / 28), report.amplification_query


# -- the checker itself: a rule that can never fail would prove nothing --------------------


def _good_pair(payload: int | None = None, answers: int = 1) -> tuple[bytes, bytes]:
    """A query with its letter case scrambled and a plain reply to it (dnspython)."""
    query = dns.message.make_query("HttpEnv.Default.svc.cluster.local", "A",
                                   use_edns=False if payload is None else 0,
                                   payload=payload or 1232)
    query.id = 0x4242
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text_list(
        query.question[0].name, 5, "IN", "A", [f"10.244.0.{i}" for i in range(answers)]))
    return query.to_wire(), reply.to_wire()


def _set(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def _flagged(query: bytes, reply: bytes, limit: int | None = None) -> set[str]:
    tally = Tally()
    tally.check(query, reply, "udp", udp_limit(query) if limit is None else limit)
    return set(tally.violations)


def test_the_checker_passes_a_good_reply_and_flags_each_broken_rule() -> None:
    query, reply = _good_pair()
    assert _flagged(query, reply) == set()
    flags = int.from_bytes(reply[2:4], "big")
    assert _flagged(query, _set(reply, 0, b"\x42\x43")) == {"ID echoed"}
    assert _flagged(query, _set(reply, 2, (flags & 0x7FFF).to_bytes(2, "big"))) == {"QR set"}
    assert _flagged(query, _set(reply, 2, (flags | 0x1000).to_bytes(2, "big"))) == {
        "opcode echoed"}
    assert _flagged(query, _set(reply, 3, bytes([reply[3] | 0x0C]))) == {"known rcode"}
    assert _flagged(query, reply + b"\x00") == {"well-formed reply"}
    lower = reply[:12] + reply[12:].replace(b"HttpEnv", b"httpenv", 1)
    assert _flagged(query, lower) == {"question echoed"}
    response = _set(query, 2, (int.from_bytes(query[2:4], "big") | 0x8000).to_bytes(2, "big"))
    assert "no reply to responses" in _flagged(response, reply)
    assert _flagged(query[:11], reply) == {"no reply without a header"}


def test_the_checker_derives_the_udp_size_limit_from_the_query() -> None:
    plain, _ = _good_pair()
    assert udp_limit(plain) == 512
    assert udp_limit(_good_pair(payload=100)[0]) == 512
    assert udp_limit(_good_pair(payload=1000)[0]) == 1000
    assert udp_limit(_good_pair(payload=4096)[0]) == 1232
    query, reply = _good_pair(answers=40)  # 12 + 39 + 40 x 16 bytes
    assert len(reply) > 512
    assert _flagged(query, reply) == {"size limit"}
    assert _flagged(*_good_pair(payload=4096, answers=40)) == set()


def test_the_tcp_matcher_follows_the_framing_the_server_must_apply() -> None:
    query, reply = _good_pair()
    second = _set(query, 0, b"\x00\x07")
    stream = frame(query) + b"\x00\x00" + frame(second)  # a zero length ends the connection
    assert server_messages(stream) == [query]
    fuzzer = TcpFuzzer(0, PacketGenerator(random.Random(0), []), Tally())
    fuzzer.match(stream, frame(reply), reset=False, stalled=False)
    assert not fuzzer.tally.violations and fuzzer.counts.no_reply == 0
    fuzzer.match(stream, frame(reply) + b"\x00", reset=False, stalled=False)
    assert set(fuzzer.tally.violations) == {"TCP framing"}
    fuzzer.match(frame(query) + frame(second), frame(reply), reset=False, stalled=False)
    assert fuzzer.counts.no_reply == 1
