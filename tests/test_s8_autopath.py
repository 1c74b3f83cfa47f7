"""§S8 Autopath: a pod's search list walked on the server, and every case where it is not.

The configuration (YAML and Corefile) and the index of which pod holds each address.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clusterdns import config, corefile
from clusterdns.config import Config, ConfigError, PodsMode
from clusterdns.objects import Cluster, Namespace, Pod
from clusterdns.snapshot import SnapshotRef, unsynced

# ----------------------------------------------------------------------- configuration


def test_s8_autopath_is_off_by_default_and_read_from_yaml() -> None:
    assert Config().autopath is False
    cfg = config.from_mapping({"pods": "verified", "autopath": True,
                               "autopath_zones": ["cluster.local"],
                               "autopath_resolv_conf": "resolv.conf"}, "x.yaml",
                              base=Path("/etc/clusterdns"))
    assert (cfg.autopath, cfg.autopath_zones, cfg.autopath_resolv_conf) == (
        True, ("cluster.local",), "/etc/clusterdns/resolv.conf")


@pytest.mark.parametrize("pods", ["disabled", "insecure"])
def test_s8_autopath_without_pods_verified_is_a_config_error_naming_the_key(pods: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"pods": pods, "autopath": True}, "x.yaml")
    assert str(info.value) == (
        "x.yaml: autopath: needs pods: verified (the pods watch tells which pod a query "
        f"comes from), not pods: {pods}")


def test_s8_autopath_zones_must_be_forward_zones_that_are_served() -> None:
    with pytest.raises(ConfigError, match=r"autopath_zones: in-addr\.arpa is not a forward"):
        config.from_mapping({"pods": "verified", "autopath": True,
                             "autopath_zones": ["in-addr.arpa"]}, "x.yaml")


COREFILE = """\
.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods verified
    }
    AUTOPATH
    forward . 192.0.2.53
}
"""


@pytest.mark.parametrize(("line", "autopath", "zones"), [
    ("autopath @kubernetes", True, ()),
    ("autopath . @kubernetes", True, ()),
    ("autopath cluster.local @kubernetes", True, ("cluster.local",)),
])
def test_s8_the_corefile_reads_autopath_as_coredns_spells_it(
        line: str, autopath: bool, zones: tuple[str, ...]) -> None:
    cfg, warnings = corefile.parse(COREFILE.replace("AUTOPATH", line))
    assert (cfg.autopath, cfg.autopath_zones, warnings) == (autopath, zones, [])
    assert cfg.autopath_resolv_conf == "/etc/resolv.conf"


def test_s8_a_corefile_autopath_of_a_resolv_conf_or_of_zones_not_ours_is_a_warning() -> None:
    cfg, warnings = corefile.parse(COREFILE.replace("AUTOPATH", "autopath /etc/resolv.conf"))
    assert not cfg.autopath
    assert warnings == ["Corefile:6: autopath: /etc/resolv.conf: only 'autopath @kubernetes' "
                        "(each pod's own search list) is supported, not one search list for "
                        "every client; ignored"]
    cfg, warnings = corefile.parse(COREFILE.replace(
        "AUTOPATH", "autopath cluster.local example.org @kubernetes"))
    assert cfg.autopath and cfg.autopath_zones == ("cluster.local",)
    assert warnings == ["Corefile:6: autopath: example.org: not a forward zone of the "
                        "kubernetes plugin (cluster.local); ignored"]


def test_s8_a_corefile_autopath_without_pods_verified_is_an_error_naming_the_line() -> None:
    text = COREFILE.replace("AUTOPATH", "autopath @kubernetes")
    with pytest.raises(ConfigError) as info:
        corefile.parse(text.replace("pods verified", "pods insecure"))
    assert str(info.value) == (
        "Corefile:6: autopath: @kubernetes needs 'pods verified' in the kubernetes block "
        "(the pods watch tells which pod asks), not pods insecure")


# ------------------------------------------------------------------- pure pieces


def test_s8_the_address_index_after_any_pod_changes_equals_one_built_from_scratch() -> None:
    """Random pods (shared addresses, phases, policies) added, changed and deleted one by
    one: the published index equals the plain answer, address -> the pods holding it."""
    rng = random.Random(8)
    cfg = Config(pods=PodsMode.VERIFIED, autopath=True)
    ref = SnapshotRef(unsynced(cfg))
    pods: dict[tuple[str, str], Pod] = {}
    ref.publish_cluster(Cluster(namespaces=(Namespace("a"),)), cfg)
    for _ in range(400):
        key = (rng.choice(["a", "b"]), f"p{rng.randrange(6)}")
        if key in pods and rng.random() < 0.3:
            del pods[key]
            snap = ref.publish_changes([(Pod, key, None)])
        else:
            ips = tuple(rng.sample(["10.0.0.1", "10.0.0.2", "fd00::1"], rng.randrange(3)))
            new = Pod(*key, ips, rng.choice(["Running", "Pending", "Succeeded", "Failed"]),
                      rng.choice(["ClusterFirst", "hostNetwork"]))
            pods[key] = new
            snap = ref.publish_changes([(Pod, key, new)])
        want: dict[str, list[Pod]] = {}
        for p in pods.values():
            if p.phase not in ("Succeeded", "Failed"):
                for ip in p.ips:
                    want.setdefault(ip, []).append(p)
        got = {ip: sorted([held] if isinstance(held, Pod) else list(held),
                          key=lambda p: (p.namespace, p.name))
               for ip, held in snap.pods_by_ip.items()}
        assert got == {ip: sorted(ps, key=lambda p: (p.namespace, p.name))
                       for ip, ps in want.items()}
        for ip, ps in want.items():
            expect = ps[0].namespace if len(ps) == 1 and ps[0].autopath else None
            assert snap.autopath_namespace(ip) == expect


def test_s8_without_autopath_no_address_index_is_kept() -> None:
    cfg = Config(pods=PodsMode.VERIFIED)
    snap = SnapshotRef(unsynced(cfg)).publish_cluster(
        Cluster(pods=(Pod("a", "p", ("10.0.0.1",), "Running"),)), cfg)
    assert len(snap.pods_by_ip) == 0 and snap.autopath_namespace("10.0.0.1") is None
