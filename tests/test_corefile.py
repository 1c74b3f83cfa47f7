"""The Corefile: what kubeadm/kind render loads into the right Config, and serves.

tests/data/Corefile.kubeadm-classic and Corefile.kubeadm-cache-disable are the
``Corefile`` of kubeadm's CoreDNS ConfigMap template (cmd/kubeadm/app/phases/addons/dns/
manifests.go in kubernetes/kubernetes) rendered with ``DNSDomain = cluster.local``: the
older template (plain ``cache 30``, what kind shipped for years) and the newer one that
disables caching of the cluster domain. Kind uses kubeadm's ConfigMap unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns import corefile
from clusterdns.config import Config, ConfigError, ListenAddr, PodsMode, SourceSpec
from conftest import DEMO_CLUSTER, ROOT, free_port
from fakekube import FakeKube

DATA = Path(__file__).resolve().parent / "data"
TIMEOUT = 20.0

KUBEADM = Config(
    zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
    source=SourceSpec("kubernetes"),
    listen=(ListenAddr("0.0.0.0", 53), ListenAddr("::", 53)),
    ttl=30,
    pods=PodsMode.INSECURE,
    namespaces=frozenset(),
    endpoint_pod_names=False,
    ignore_empty_service=False,
    kubeconfig="",
    context="",
    labels="",
    upstreams=("/etc/resolv.conf",),
    forward_max_concurrent=1000,
    loop_detect=True,
    fallthrough=frozenset({"in-addr.arpa", "ip6.arpa"}),
    cache_size=corefile.CACHE_CAPACITY,  # CoreDNS: 9984 positive, 9984 negative
    cache_negative_size=corefile.CACHE_CAPACITY,
    cache_min_ttl=corefile.CACHE_MIN_TTL,  # CoreDNS's default MINTTL, both caches
    cache_negative_min_ttl=corefile.CACHE_MIN_TTL,
    cache_ttl=30,
    cache_negative_ttl=30,
    serve_stale=0.0,
    health=ListenAddr("0.0.0.0", 8080),
    ready=ListenAddr("0.0.0.0", 8181),
    metrics=ListenAddr("0.0.0.0", 9153),
    lameduck=5.0,
    reload=30.0,
    log_queries=False,
)


def load_text(tmp_path: Path, text: str, name: str = "Corefile",
              env: dict[str, str] | None = None) -> tuple[Config, list[str], str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    cfg, warnings = corefile.parse(text, str(path), base=tmp_path, env=env or {})
    return cfg, warnings, str(path)


def minimal(body: str = "", key: str = ".:53") -> str:
    return f"{key} {{\n    kubernetes cluster.local\n{body}}}\n"


def assert_fields(cfg: Config, expected: Config) -> None:
    """Every field, one by one, so a failure names the field."""
    for f in dataclasses.fields(Config):
        if f.name == "origin":
            continue
        assert getattr(cfg, f.name) == getattr(expected, f.name), f.name


# ------------------------------------------------------------------ kubeadm / kind files


@pytest.mark.parametrize("name", ["Corefile.kubeadm-classic", "Corefile.kubeadm-cache-disable"])
def test_the_corefile_kubeadm_and_kind_ship_loads_into_the_expected_config(name: str) -> None:
    cfg, warnings = corefile.load(DATA / name)
    assert warnings == []
    assert_fields(cfg, KUBEADM)
    assert cfg.origin == str(DATA / name)
    assert cfg != Config()  # the file changed things: not the defaults


def test_disabling_the_cache_for_the_cluster_domain_is_satisfied_by_design_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="clusterdns.corefile"):
        corefile.load(DATA / "Corefile.kubeadm-cache-disable")
    lines = [r.getMessage() for r in caplog.records if "satisfied by design" in r.getMessage()]
    assert len(lines) == 2
    assert any(":17: cache disable cluster.local" in m for m in lines)
    assert any(":18: cache disable cluster.local" in m for m in lines)


def test_disabling_the_cache_for_a_foreign_zone_warns_that_it_is_still_cached(
        tmp_path: Path) -> None:
    _, warnings, path = load_text(tmp_path, minimal(
        "    cache 30 {\n        disable denial example.com\n    }\n"))
    assert warnings == [f"{path}:4: cache disable: example.com: not supported for zones that "
                        "are not ours; forwarded answers for it are still cached"]


# ----------------------------------------------------------------------- server block


@pytest.mark.parametrize(("key", "port"), [
    (".:53", 53), (".:1053", 1053), (".", 53), ("dns://.:53", 53), ("dns://.", 53),
    (".:5353 cluster.local:5353", 5353), (".:5353, cluster.local:5353", 5353),
])
def test_the_server_block_key_sets_the_port_on_every_ipv4_and_ipv6_address(
        tmp_path: Path, key: str, port: int) -> None:
    cfg, _, _ = load_text(tmp_path, minimal(key=key))
    assert cfg.listen == (ListenAddr("0.0.0.0", port), ListenAddr("::", port))


def test_bind_restricts_the_listen_addresses(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal("    bind 127.0.0.1 ::1\n", key=".:5300"))
    assert warnings == []
    assert cfg.listen == (ListenAddr("127.0.0.1", 5300), ListenAddr("::1", 5300))


def test_a_single_server_block_may_omit_its_braces(tmp_path: Path) -> None:
    cfg, _, _ = load_text(tmp_path, ".:1053\nkubernetes example.internal\nlog\n")
    assert cfg.zones == ("example.internal",)
    assert cfg.log_queries is True
    assert cfg.listen[0].port == 1053


def test_comments_quotes_and_braces_on_the_next_line_are_read(tmp_path: Path) -> None:
    text = (
        "# the cluster's DNS\n"
        ".:53\n"
        "{\n"
        "    kubernetes \"cluster.local\" in-addr.arpa   # trailing comment\n"
        "    {\n"
        "        labels \"app in (web, api)\"\n"
        "        kubeconfig \"/etc/kube config\" \"my ctx\"\n"
        "    }\n"
        "    # prometheus :9153\n"
        "    health { lameduck 2s }\n"
        "}\n")
    cfg, warnings, _ = load_text(tmp_path, text)
    assert warnings == []
    assert cfg.zones == ("cluster.local", "in-addr.arpa")
    assert cfg.labels == "app in (web, api)"
    assert (cfg.kubeconfig, cfg.context) == ("/etc/kube config", "my ctx")
    assert cfg.metrics is None  # commented out
    assert (cfg.health, cfg.lameduck) == (ListenAddr("0.0.0.0", 8080), 2.0)


def test_environment_variables_are_substituted_and_a_missing_one_warns(tmp_path: Path) -> None:
    text = minimal("    forward . {$UPSTREAMS}\n    reload {$RELOAD}\n    ready {$NOPE}\n")
    cfg, warnings, path = load_text(tmp_path, text,
                                    env={"UPSTREAMS": "10.0.0.1 dns://10.0.0.2:5353",
                                         "RELOAD": "10s"})
    assert cfg.upstreams == ("10.0.0.1:53", "10.0.0.2:5353")
    assert cfg.reload == 10.0
    assert cfg.ready == ListenAddr("0.0.0.0", 8181)
    assert warnings == [f"{path}:5: environment variable NOPE is not set; using an empty value"]


# ------------------------------------------------------------------------- directives


def test_absent_plugins_turn_their_features_off(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal())
    assert warnings == []
    assert (cfg.health, cfg.ready, cfg.metrics) == (None, None, None)
    assert cfg.loop_detect is False
    assert cfg.reload == 0.0
    assert cfg.upstreams == ()
    assert cfg.cache_size == 0
    assert cfg.log_queries is False
    assert cfg.lameduck == 0.0


def test_plugins_without_an_address_use_the_coredns_defaults(tmp_path: Path) -> None:
    cfg, _, _ = load_text(tmp_path, minimal("    health\n    ready\n    prometheus\n"))
    assert cfg.health == ListenAddr("0.0.0.0", 8080)
    assert cfg.ready == ListenAddr("0.0.0.0", 8181)
    assert cfg.metrics == ListenAddr("127.0.0.1", 9153)  # CoreDNS: localhost:9153
    assert cfg.lameduck == 0.0  # no lameduck block: CoreDNS stops at once


def test_plugins_with_an_address_listen_there(tmp_path: Path) -> None:
    cfg, _, _ = load_text(tmp_path, minimal(
        "    health 127.0.0.1:18080\n    ready :18181\n    prometheus [::1]:19153\n"
        "    reload 1m30s\n    log\n    loop\n"))
    assert cfg.health == ListenAddr("127.0.0.1", 18080)
    assert cfg.ready == ListenAddr("0.0.0.0", 18181)
    assert cfg.metrics == ListenAddr("::1", 19153)
    assert cfg.reload == 90.0
    assert cfg.log_queries is True
    assert cfg.loop_detect is True


def test_every_kubernetes_option_reaches_the_config(tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, (
        ".:53 {\n"
        "    kubernetes example.internal 10.0.0.0/8 10.244.0.0/16 fd00:10:96::/48 "
        "clusterset.local {\n"
        "        pods verified\n"
        "        fallthrough\n"
        "        ttl 0\n"
        "        namespaces default kube-system\n"
        "        endpoint_pod_names\n"
        "        kubeconfig kube/config admin\n"
        "        labels env=prod\n"
        "        ignore empty_service\n"
        "        noendpoints\n"
        "        multicluster clusterset.local\n"
        "    }\n"
        "}\n"))
    zones = ("example.internal", "10.in-addr.arpa", "244.10.in-addr.arpa",
             "6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa")
    assert cfg.zones == zones  # the multicluster zone is taken out of the cluster zones
    assert cfg.multicluster_zones == ("clusterset.local",)
    assert cfg.pods is PodsMode.VERIFIED
    assert cfg.fallthrough == frozenset((*zones, "clusterset.local"))  # no zones: all ours
    assert cfg.ttl == 0
    assert cfg.namespaces == frozenset({"default", "kube-system"})
    assert cfg.endpoint_pod_names is True
    assert cfg.kubeconfig == str(tmp_path / "kube" / "config")
    assert cfg.context == "admin"
    assert cfg.labels == "env=prod"
    assert cfg.ignore_empty_service is True
    assert cfg.source == SourceSpec("kubernetes")
    assert warnings == [
        f"{path}:11: kubernetes noendpoints: not supported; endpoint records are still served",
    ]


def test_forward_reads_addresses_resolv_conf_and_max_concurrent(tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal(
        "    forward . dns://1.1.1.1 8.8.8.8:5353 2001:db8::1 [2001:db8::2]:53 "
        "/etc/resolv.conf {\n"
        "        max_concurrent 50\n"
        "        tls_servername dns.example\n"
        "    }\n"))
    assert cfg.upstreams == ("1.1.1.1:53", "8.8.8.8:5353", "[2001:db8::1]:53",
                             "[2001:db8::2]:53", "/etc/resolv.conf")
    assert cfg.forward_max_concurrent == 50
    assert warnings == [f"{path}:5: forward tls_servername: option not supported by "
                        "clusterdns; ignored"]


def test_forward_for_a_single_zone_is_ignored_with_a_warning(tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal("    forward consul.local 10.0.0.9\n"))
    assert cfg.upstreams == ()
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:3: forward: ")


def test_cache_capacities_ttls_and_serve_stale_reach_the_config(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal(
        "    cache 300 {\n"
        "        success 5000 600\n"
        "        denial 1000\n"
        "        serve_stale 10m\n"
        "    }\n"))
    assert warnings == []
    assert (cfg.cache_size, cfg.cache_ttl, cfg.cache_negative_size,
            cfg.cache_negative_ttl) == (5000, 600, 1000, 300)
    assert cfg.serve_stale == 600.0
    cfg, _, _ = load_text(tmp_path, minimal("    cache {\n        serve_stale\n    }\n"))
    assert (cfg.cache_ttl, cfg.cache_negative_ttl) == (Config().cache_ttl,
                                                       Config().cache_negative_ttl)
    assert cfg.serve_stale == corefile.DEFAULT_SERVE_STALE


def test_unknown_plugins_and_import_each_give_one_warning_naming_the_line(
        tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, (
        ".:53 {\n"
        "    errors\n"
        "    hosts /etc/coredns/NodeHosts {\n"
        "        ttl 60\n"
        "        fallthrough\n"
        "    }\n"
        "    rewrite name foo.example.com foo.default.svc.cluster.local\n"
        "    template IN A example {\n"
        "        answer \"{{ .Name }} 60 IN A 10.0.0.1\"\n"
        "    }\n"
        "    kubernetes cluster.local\n"
        "    import custom/*.override\n"
        "}\n"
        "import custom/*.server\n"))
    assert cfg.zones == ("cluster.local",)
    assert warnings == [
        f"{path}:14: import: not supported; ignored (custom/*.server)",
        f"{path}:3: hosts: plugin not supported by clusterdns; ignored",
        f"{path}:7: rewrite: plugin not supported by clusterdns; ignored",
        f"{path}:8: template: plugin not supported by clusterdns; ignored",
        f"{path}:12: import: not supported; ignored (custom/*.override)",
    ]


# ----------------------------------------------------------------------- broken input


BROKEN = {
    "unclosed-block": (".:53 {\n    kubernetes cluster.local {\n        ttl 30\n}\n",
                       1, "unbalanced braces"),
    "extra-close": (".:53 {\n    kubernetes cluster.local\n}\n}\n", 4, "unbalanced braces"),
    "ttl-not-a-number": (".:53 {\n    kubernetes cluster.local {\n"
                         "        ttl abc\n    }\n}\n", 3, "kubernetes ttl"),
    "unknown-pods-mode": (".:53 {\n    kubernetes cluster.local {\n        pods sometimes\n"
                          "    }\n}\n", 3, "kubernetes pods"),
    "kubeconfig-without-path": (".:53 {\n    kubernetes cluster.local {\n        kubeconfig\n"
                                "    }\n}\n", 3, "kubernetes kubeconfig"),
    "forward-without-upstream": (".:53 {\n    kubernetes cluster.local\n    forward .\n}\n",
                                 3, "forward"),
    "forward-over-tls": (".:53 {\n    kubernetes cluster.local\n"
                         "    forward . tls://1.1.1.1\n}\n", 3, "forward"),
    "bad-lameduck": (".:53 {\n    kubernetes cluster.local\n    health {\n"
                     "        lameduck soon\n    }\n}\n", 4, "health lameduck"),
    "bad-reload": (".:53 {\n    kubernetes cluster.local\n    reload 30\n}\n", 3, "reload"),
    "bad-health-address": (".:53 {\n    kubernetes cluster.local\n    health :99999\n}\n",
                           3, "health"),
    "kubernetes-twice": (".:53 {\n    kubernetes cluster.local\n    kubernetes example.org\n}\n",
                         3, "kubernetes"),
    "no-kubernetes": (".:53 {\n    forward . 1.1.1.1\n}\n", 1, "kubernetes"),
    "second-server-block": (minimal() + "consul.local:53 {\n    forward . 10.150.0.1\n}\n",
                            4, "second server block"),
    "bad-port": (".:dns {\n    kubernetes cluster.local\n}\n", 1, "server block"),
    "cidr-off-boundary": (".:53 {\n    kubernetes cluster.local 10.96.0.0/12\n}\n",
                          2, "kubernetes"),
    "unclosed-quote": (".:53 {\n    kubernetes \"cluster.local\n}\n", 2, "syntax"),
    "loop-with-argument": (".:53 {\n    kubernetes cluster.local\n    loop 5\n}\n", 3, "loop"),
    "transfer-without-to": (minimal("    transfer {\n        source 10.0.0.53\n    }\n"),
                            3, "transfer"),
    "transfer-to-nothing": (minimal("    transfer {\n        to\n    }\n"), 4, "transfer to"),
    "transfer-to-a-name": (minimal("    transfer {\n        to ns1.example.com\n    }\n"),
                           4, "transfer to"),
    "transfer-twice": (minimal("    transfer {\n        to *\n    }\n"
                               "    transfer in-addr.arpa {\n        to *\n    }\n"),
                       6, "transfer"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_corefile_fails_naming_the_file_the_line_and_the_directive(
        tmp_path: Path, case: str) -> None:
    text, line, key = BROKEN[case]
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    path = str(tmp_path / "Corefile")
    assert caught.value.where == f"{path}:{line}"
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert key in str(caught.value)


# ------------------------------------------------------------------------------- CLI


def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """The command line, with a kubeconfig for Corefiles that give none: check-config
    loads the kubeconfig of the kubernetes source (without contacting its server)."""
    env = {**os.environ, "KUBECONFIG": str(DATA / "check.kubeconfig")}
    return subprocess.run([sys.executable, "-m", "clusterdns", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_check_config_reads_a_file_named_corefile_as_a_corefile_and_prints_warnings(
        tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(minimal("    hosts /etc/hosts\n", key=".:1053"), encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok: zones cluster.local; source kubernetes; "
                                    "listen 0.0.0.0:1053, [::]:1053")
    assert f"warning: {path}:3: hosts: plugin not supported" in result.stderr


def test_check_config_with_the_corefile_flag_reads_any_name_as_a_corefile(
        tmp_path: Path) -> None:
    # A single server block without braces: neither its name nor its first line says
    # Corefile, so it is read as YAML, and the error says how to check it as a Corefile.
    path = tmp_path / "dns.conf"
    path.write_text(".:53\nkubernetes cluster.local\n", encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert f"check-config --corefile {path}" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("check-config", "--corefile", str(path))
    assert result.returncode == 0, result.stderr
    assert "zones cluster.local" in result.stdout


@pytest.mark.parametrize("first_line", [".:53 {", "cluster.local:53 {", ". {",
                                        "dns://.:53 {", "cluster.local:53 in-addr.arpa:53 {"])
def test_check_config_recognises_a_corefile_by_its_server_block_whatever_its_name(
        tmp_path: Path, first_line: str) -> None:
    path = tmp_path / "coredns.conf"
    path.write_text(f"# rendered by kubeadm\n\n{first_line}\n    errors\n"
                    "    kubernetes cluster.local\n}\n", encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok: zones cluster.local; source kubernetes; "
                                    "listen 0.0.0.0:53, [::]:53"), result.stdout


def test_check_config_recognises_kubeadms_corefile_under_another_name(tmp_path: Path) -> None:
    path = tmp_path / "kubeadm-dns.txt"
    shutil.copy(DATA / "Corefile.kubeadm-classic", path)
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok: zones cluster.local, in-addr.arpa, "
                                    "ip6.arpa; source kubernetes"), result.stdout


@pytest.mark.parametrize("first_line", ["ttl: 5", "zones: [cluster.local]", "listen: {",
                                        "- .:53 {", "{ttl: 5}", "---", ".:53"])
def test_a_file_whose_first_line_opens_no_server_block_is_not_taken_for_a_corefile(
        tmp_path: Path, first_line: str) -> None:
    path = tmp_path / "clusterdns.yaml"
    path.write_text(f"# comment\n{first_line}\n", encoding="utf-8")
    assert not corefile.looks_like_corefile(path)


def test_check_config_on_a_broken_corefile_exits_2_naming_the_file_and_line(
        tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(BROKEN["unknown-pods-mode"][0], encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:3: kubernetes pods" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_config_and_corefile_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(minimal(), encoding="utf-8")
    result = run("records", "--config", "config/demo.yaml", "--corefile", str(path))
    assert result.returncode == 2
    assert "--corefile" in result.stderr


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    """The demo cluster behind a fake API server, and a kubeconfig for it."""
    server = FakeKube()
    server.load_yaml(DEMO_CLUSTER)
    with server:
        yield server, server.write_kubeconfig(tmp_path / "kubeconfig")


def served_corefile(tmp_path: Path, kubeconfig: Path, port: int) -> Path:
    path = tmp_path / "Corefile"
    path.write_text(
        f".:{port} {{\n"
        "    errors\n"
        "    bind 127.0.0.1\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods insecure\n"
        "        ttl 7\n"
        "    }\n"
        "    hosts /etc/coredns/NodeHosts\n"
        "}\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def running(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "clusterdns", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def wait_for_answer(proc: subprocess.Popen[str], port: int, name: str) -> dns.message.Message:
    """Poll until the server answers NOERROR (SERVFAIL until its first sync)."""
    deadline = time.monotonic() + TIMEOUT
    last = "no reply"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"clusterdns exited with {proc.returncode}: {err}")
        try:
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                                  timeout=0.5)
        except (dns.exception.Timeout, ConnectionRefusedError):
            continue
        if reply.rcode() == dns.rcode.NOERROR:
            return reply
        last = dns.rcode.to_text(reply.rcode())
        time.sleep(0.05)
    raise AssertionError(f"no NOERROR answer within {TIMEOUT} s (last: {last})")


def test_clusterdns_dash_conf_serves_the_corefile_like_coredns_does(
        tmp_path: Path, fake: tuple[FakeKube, Path]) -> None:
    _, kubeconfig = fake
    port = free_port()
    path = served_corefile(tmp_path, kubeconfig, port)
    with running("-conf", str(path)) as proc:  # exactly kubeadm's container args
        reply = wait_for_answer(proc, port, "httpenv.default.svc.cluster.local")
        (rrset,) = reply.answer
        assert [rd.to_text() for rd in rrset] == ["10.108.189.10"]
        assert rrset.ttl == 7  # the Corefile's kubernetes ttl
        # No forward directive: names outside our zones are refused.
        other = dns.query.udp(dns.message.make_query("example.com", "A"), "127.0.0.1",
                              port=port, timeout=5)
        assert other.rcode() == dns.rcode.REFUSED
        if shutil.which("dig"):
            dig = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=3",
                                  "+time=3", "10.189.108.10.in-addr.arpa", "PTR"],
                                 capture_output=True, text=True, timeout=TIMEOUT, check=False)
            assert dig.stdout.split() == ["httpenv.default.svc.cluster.local."], dig
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        _, err = proc.communicate(timeout=5)
    assert f"{path}:9: hosts: plugin not supported" in err


def test_flags_override_the_corefile(tmp_path: Path, fake: tuple[FakeKube, Path]) -> None:
    _, kubeconfig = fake
    path = served_corefile(tmp_path, kubeconfig, 53)
    result = run("records", "--corefile", str(path), "--ttl", "42")
    assert result.returncode == 0, result.stderr
    lines = [ln.split() for ln in result.stdout.splitlines() if not ln.startswith(";")]
    assert ["httpenv.default.svc.cluster.local.", "42", "IN", "A", "10.108.189.10"] in lines
    assert {ln[1] for ln in lines} == {"42"}
    result = run("records", "--corefile", str(path))
    assert result.returncode == 0, result.stderr
    assert {ln.split()[1] for ln in result.stdout.splitlines()
            if not ln.startswith(";")} == {"7"}


def test_every_forward_option_of_coredns_reaches_the_config(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal(
        "    forward . 10.0.0.1 10.0.0.2 {\n"
        "        max_fails 3\n"
        "        health_check 2s\n"
        "        policy round_robin\n"
        "        expire 30s\n"
        "        force_tcp\n"
        "        max_concurrent 77\n"
        "    }\n"))
    assert warnings == []
    assert (cfg.forward_max_fails, cfg.forward_health_check, cfg.forward_policy,
            cfg.forward_expire, cfg.forward_force_tcp, cfg.forward_prefer_udp,
            cfg.forward_max_concurrent) == (3, 2.0, "round_robin", 30.0, True, False, 77)
    cfg, warnings, _ = load_text(tmp_path, minimal(
        "    forward . 10.0.0.1 {\n        prefer_udp\n        policy sequential\n    }\n"))
    assert warnings == [] and cfg.forward_prefer_udp and cfg.forward_policy == "sequential"


@pytest.mark.parametrize(("option", "problem"), [
    ("policy fastest", "'fastest': expected one of random, round_robin, sequential"),
    ("max_fails -1", "max_fails"),
    ("health_check soon", "expected a duration"),
    ("force_tcp please", "force_tcp"),
])
def test_a_bad_forward_option_names_the_line(tmp_path: Path, option: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, minimal(f"    forward . 10.0.0.1 {{\n        {option}\n    }}\n"))
    assert ":4:" in str(err.value) and problem in str(err.value)


def test_health_check_options_coredns_has_and_we_do_not_warn_with_the_line(
        tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal(
        "    forward . 10.0.0.1 {\n        health_check 1s no_rec\n    }\n"))
    assert cfg.forward_health_check == 1.0
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:4: forward health_check:")


def test_every_cache_option_of_coredns_reaches_the_config(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal(
        "    cache 120 {\n"
        "        success 4000 600 10\n"
        "        denial 2000 60 3\n"
        "        prefetch 5 30s 20%\n"
        "        serve_stale 1h\n"
        "    }\n"))
    assert warnings == []
    assert (cfg.cache_size, cfg.cache_ttl, cfg.cache_min_ttl) == (4000, 600, 10)
    assert (cfg.cache_negative_size, cfg.cache_negative_ttl,
            cfg.cache_negative_min_ttl) == (2000, 60, 3)
    assert (cfg.cache_prefetch, cfg.cache_prefetch_window,
            cfg.cache_prefetch_percentage) == (5, 30.0, 20)
    assert cfg.serve_stale == 3600.0


@pytest.mark.parametrize(("line", "expected"), [
    ("prefetch 2", (2, 60.0, 10)),  # CoreDNS's defaults: 1m, 10%
    ("prefetch 3 5m", (3, 300.0, 10)),
    ("prefetch 4 25%", (4, 60.0, 25)),
])
def test_prefetch_takes_coredns_defaults_for_what_it_leaves_out(
        tmp_path: Path, line: str, expected: tuple[int, float, int]) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal(f"    cache {{\n        {line}\n    }}\n"))
    assert warnings == []
    assert (cfg.cache_prefetch, cfg.cache_prefetch_window,
            cfg.cache_prefetch_percentage) == expected


@pytest.mark.parametrize("line", ["prefetch 0", "prefetch 2 1m 95%", "prefetch 2 1m 5%",
                                  "prefetch 2 fast", "prefetch 2 1m 10% more"])
def test_a_bad_prefetch_names_the_line(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, minimal(f"    cache {{\n        {line}\n    }}\n"))
    assert ":4: cache prefetch" in str(err.value)


def test_an_unknown_cache_option_warns_with_its_line(tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal(
        "    cache 30 {\n        keepttl\n    }\n"))
    assert warnings == [f"{path}:4: cache keepttl: option not supported by clusterdns; ignored"]
    assert cfg.cache_ttl == 30


def test_an_unknown_forward_option_and_contradicting_ones_warn_with_their_line(
        tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal(
        "    forward . 10.0.0.1 {\n        tls_servername dns.example\n        force_tcp\n"
        "        prefer_udp\n    }\n"))
    assert warnings == [
        f"{path}:4: forward tls_servername: option not supported by clusterdns; ignored",
        f"{path}:3: forward: force_tcp and prefer_udp together: force_tcp wins"]
    assert cfg.forward_force_tcp and not cfg.forward_prefer_udp


# ------------------------------------------------------------------------ transfer


def test_the_transfer_block_reaches_the_config(tmp_path: Path) -> None:
    cfg, warnings, _ = load_text(tmp_path, minimal(
        "    transfer cluster.local 10.0.0.0/8 {\n"
        "        to 10.0.0.1 10.0.0.2:5300 [fd00::1]:53\n"
        "        to 192.168.0.0/16\n"
        "        source 10.0.0.53\n"
        "    }\n"))
    assert cfg.transfer_to == ("10.0.0.1", "10.0.0.2", "fd00::1", "192.168.0.0/16")
    assert cfg.transfer_zones == ("cluster.local", "10.in-addr.arpa")
    assert warnings == []  # NOTIFY ports and source: nothing to warn about, we send none
    anyone, _, _ = load_text(tmp_path, minimal("    transfer {\n        to *\n    }\n"))
    assert anyone.transfer_to == ("*",)
    assert anyone.transfer_zones == ()  # the server block is '.': every zone of ours
    assert Config().transfer_to == () and corefile.parse(minimal())[0].transfer_to == ()


def test_transfer_without_zones_takes_the_server_blocks_zones(tmp_path: Path) -> None:
    cfg, _, _ = load_text(tmp_path, minimal("    transfer {\n        to *\n    }\n",
                                            key="cluster.local:53"))
    assert cfg.transfer_zones == ("cluster.local",)


def test_an_unknown_transfer_option_warns_naming_its_line(tmp_path: Path) -> None:
    cfg, warnings, path = load_text(tmp_path, minimal(
        "    transfer {\n"
        "        to 127.0.0.1\n"
        "        notify_delay 5s\n"
        "    }\n"))
    assert cfg.transfer_to == ("127.0.0.1",)
    assert warnings == [f"{path}:5: transfer notify_delay: option not supported by "
                        "clusterdns; ignored"]


def test_clusterdns_dash_conf_transfers_zones_to_the_clients_its_transfer_block_names(
        tmp_path: Path, fake: tuple[FakeKube, Path]) -> None:
    _, kubeconfig = fake
    port = free_port()
    path = served_corefile(tmp_path, kubeconfig, port)
    text = path.read_text(encoding="utf-8").replace(
        "    hosts /etc/coredns/NodeHosts\n",
        "    transfer cluster.local {\n        to 127.0.0.1\n    }\n")
    path.write_text(text, encoding="utf-8")
    with running("-conf", str(path)) as proc:
        wait_for_answer(proc, port, "httpenv.default.svc.cluster.local")
        xfr = dns.query.xfr("127.0.0.1", "cluster.local", port=port, source="127.0.0.1",
                            relativize=False, timeout=TIMEOUT)
        answers = [rrset for msg in xfr for rrset in msg.answer]
        assert answers[0].rdtype == answers[-1].rdtype == dns.rdatatype.SOA
        assert any(r.name.to_text() == "httpenv.default.svc.cluster.local." for r in answers)
        for source, zone in (("127.0.0.2", "cluster.local"), ("127.0.0.1", "in-addr.arpa")):
            query = dns.message.make_query(zone, "AXFR", use_edns=0)
            reply = dns.query.tcp(query, "127.0.0.1", port=port, source=source,
                                  timeout=TIMEOUT)
            assert reply.rcode() == dns.rcode.REFUSED, (source, zone)
            assert reply.extended_errors(), (source, zone)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
