"""The image, the CoreDNS-replacing manifests and the sidecar example, checked as shipped.

Why: these files are only ever run on a cluster, which CI does not have, so every claim
they make is checked here against the code that will read them: the kustomizations
build with ``kubectl``; every object loads into the ``kubernetes`` client's models with
no field lost; the ClusterRole and the sidecar's Role grant exactly what
``KubeSource.watches()`` lists and watches for the configuration they ship with; the
Deployment is kubeadm's in everything kubeadm users and tools rely on; the Dockerfile's
entrypoint and command are accepted by our own argument parser; and the server, started
with the image's environment, writes no file at all (``readOnlyRootFilesystem``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from kubernetes import client as kclient

from clusterdns import cli, config, corefile
from clusterdns.config import Config
from clusterdns.source.kube import RESOURCES, KubeSource
from clusterdns.store import Kind
from conftest import ROOT

KUBE_DIR = ROOT / "config" / "kubernetes"
MULTICLUSTER_DIR = ROOT / "config" / "kubernetes-multicluster"  # opt-in overlay of KUBE_DIR
SIDECAR_DIR = ROOT / "config" / "sidecar"
DOCKERFILE = ROOT / "Dockerfile"
TIMEOUT = 30.0

Obj = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def kubectl_kustomize(folder: Path) -> list[Obj]:
    """``kubectl kustomize FOLDER``: the objects ``kubectl apply -k`` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: .ci/run installs it")
        pytest.skip("kubectl is not installed (.ci/run installs it)")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def read_resources(folder: Path) -> list[Obj]:
    """The objects of a kustomization's ``resources`` files, read directly (what a
    kustomization with nothing but ``resources`` builds to)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, (
        "the kustomization grew transformers: build it with kubectl only")
    docs: list[Obj] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((folder / name).read_text()) if d]
    return docs


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def model_class(obj: Obj) -> str:
    """``apps/v1`` ``Deployment`` -> ``V1Deployment``: the client's model for an object."""
    version = str(obj["apiVersion"]).rsplit("/", 1)[-1]
    return version[:1].upper() + version[1:] + str(obj["kind"])


def load_model(obj: Obj) -> Any:
    api = kclient.ApiClient()
    return api.deserialize(json.dumps(obj), model_class(obj), "application/json")


def granted(rules: list[Obj]) -> set[tuple[str, str]]:
    """(apiGroup, resource) pairs of RBAC rules, each checked to grant list+watch only."""
    pairs: set[tuple[str, str]] = set()
    for rule in rules:
        assert sorted(rule["verbs"]) == ["list", "watch"], rule
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        pairs |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    return pairs


def watched(cfg: Config) -> set[tuple[str, str]]:
    """(apiGroup, resource) pairs clusterdns lists and watches with this config."""
    return {(RESOURCES[kind].group, RESOURCES[kind].plural)
            for kind, _ in KubeSource(cfg).watches()}


def corefile_of(objs: list[Obj]) -> str:
    text = one(objs, "ConfigMap", "coredns")["data"]["Corefile"]
    assert isinstance(text, str)
    return text


def ports_by_name(container: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def probe_port(container: Obj, probe: str) -> int:
    port = container[probe]["httpGet"]["port"]
    return port if isinstance(port, int) else ports_by_name(container)[port]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage from {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for arg in self.all("ENV"):
            for word in shlex.split(arg):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {arg!r}: use KEY=VALUE"
                env[key] = value
        return env


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's build stages: (KEYWORD, argument) per instruction, continuation
    lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arg.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, arg.strip()))
    return stages


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the context) out of the build
    (last matching pattern wins; a pattern matching a parent folder matches its files)."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    excluded = False
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def kube_objects() -> list[Obj]:
    return kubectl_kustomize(KUBE_DIR)


@pytest.fixture(scope="module")
def sidecar_objects() -> list[Obj]:
    return kubectl_kustomize(SIDECAR_DIR)


# ------------------------------------------------------------------ the manifests


def test_kubectl_kustomize_builds_both_folders_into_exactly_their_resource_files(
        kube_objects: list[Obj], sidecar_objects: list[Obj]) -> None:
    assert kube_objects == read_resources(KUBE_DIR)
    assert sidecar_objects == read_resources(SIDECAR_DIR)
    kinds = sorted(o["kind"] for o in kube_objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
                     "ServiceAccount"]


def test_every_object_loads_into_the_kubernetes_client_models_without_losing_a_field(
        kube_objects: list[Obj], sidecar_objects: list[Obj]) -> None:
    # (the client leaves it unannotated)
    sanitize: Callable[[Any], Any] = kclient.ApiClient().sanitize_for_serialization
    for obj in kube_objects + sidecar_objects:
        assert hasattr(kclient, model_class(obj)), f"no model for {obj['kind']}"
        model = load_model(obj)
        assert type(model).__name__ == model_class(obj)
        # A misspelt or misplaced field is silently dropped by the models: compare.
        assert sanitize(model) == obj, (
            f"{obj['kind']} {obj['metadata']['name']} has fields the API does not know")


def test_the_cluster_role_grants_only_list_and_watch_on_what_the_corefile_makes_us_watch(
        kube_objects: list[Obj]) -> None:
    cfg, warnings = corefile.parse(corefile_of(kube_objects))
    assert warnings == []
    needed = watched(cfg)
    assert ("", "services") in needed and ("discovery.k8s.io", "endpointslices") in needed
    role = one(kube_objects, "ClusterRole", "system:coredns")
    assert granted(role["rules"]) == needed
    assert [o["kind"] for o in kube_objects].count("Role") == 0


def test_only_the_multicluster_variant_grants_serviceimports_and_its_corefile_watches_them(
        kube_objects: list[Obj]) -> None:
    """The base neither serves clusterset.local nor may read ServiceImports; the opt-in
    overlay adds exactly that: one RBAC rule and the Corefile's multicluster zone, and
    changes nothing else (SPEC S7)."""
    imports = ("multicluster.x-k8s.io", "serviceimports")
    base_role = one(kube_objects, "ClusterRole", "system:coredns")
    assert imports not in granted(base_role["rules"])
    base_cfg, _ = corefile.parse(corefile_of(kube_objects))
    assert base_cfg.multicluster_zones == ()
    assert imports not in watched(base_cfg)

    variant = kubectl_kustomize(MULTICLUSTER_DIR)
    cfg, warnings = corefile.parse(corefile_of(variant))
    assert warnings == []
    assert cfg.multicluster_zones == ("clusterset.local",)
    assert cfg.replace(multicluster_zones=()) == base_cfg  # nothing else of the config
    role = one(variant, "ClusterRole", "system:coredns")
    assert imports in watched(cfg)
    assert granted(role["rules"]) == watched(cfg)
    assert role["rules"][:-1] == base_role["rules"]  # one rule added, the others kept
    changed = {("ClusterRole", "system:coredns"), ("ConfigMap", "coredns")}
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in kube_objects}
    assert {(o["kind"], o["metadata"]["name"]) for o in variant} == set(by_key)
    for obj in variant:
        key = (obj["kind"], obj["metadata"]["name"])
        if key not in changed:
            assert obj == by_key[key], key
        sanitize: Callable[[Any], Any] = kclient.ApiClient().sanitize_for_serialization
        assert sanitize(load_model(obj)) == obj, key


def test_the_cluster_role_is_bound_to_the_service_account_the_deployment_runs_as(
        kube_objects: list[Obj]) -> None:
    binding = one(kube_objects, "ClusterRoleBinding", "system:coredns")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "system:coredns"}
    sa = one(kube_objects, "ServiceAccount")
    pod = one(kube_objects, "Deployment")["spec"]["template"]["spec"]
    subject = {"kind": "ServiceAccount", "name": sa["metadata"]["name"],
               "namespace": sa["metadata"]["namespace"]}
    assert binding["subjects"] == [subject]
    assert pod["serviceAccountName"] == subject["name"] == "coredns"
    assert sa["metadata"]["namespace"] == "kube-system"


def test_the_deployment_keeps_kubeadms_name_labels_scheduling_resources_and_security(
        kube_objects: list[Obj]) -> None:
    dep = one(kube_objects, "Deployment")
    assert (dep["metadata"]["namespace"], dep["metadata"]["name"]) == ("kube-system",
                                                                       "coredns")
    assert dep["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert dep["spec"]["selector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"]["k8s-app"] == "kube-dns"
    spec = pod["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in spec["tolerations"]
    assert {"key": "node-role.kubernetes.io/control-plane",
            "effect": "NoSchedule"} in spec["tolerations"]
    assert "podAntiAffinity" in spec["affinity"]
    assert spec["dnsPolicy"] == "Default"  # forward . /etc/resolv.conf must not loop
    (container,) = spec["containers"]
    assert container["name"] == "coredns"  # what `kubectl set image coredns=...` names
    assert container["resources"] == {"limits": {"memory": "170Mi"},
                                      "requests": {"cpu": "100m", "memory": "70Mi"}}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": True}
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    (mount,) = container["volumeMounts"]
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["configMap"]["name"] == "coredns"
    assert Path(mount["mountPath"]) / volume["configMap"]["items"][0]["path"] == Path(
        container["args"][1])


def test_the_deployments_ports_and_probes_are_kubeadms_and_where_the_corefile_listens(
        kube_objects: list[Obj]) -> None:
    cfg, _ = corefile.parse(corefile_of(kube_objects))
    (container,) = one(kube_objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert cfg.health and cfg.ready and cfg.metrics
    dns_port = {a.port for a in cfg.listen}
    assert dns_port == {53}
    assert ports == {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"),
                     ("metrics", cfg.metrics.port, "TCP"),
                     ("liveness-probe", cfg.health.port, "TCP"),
                     ("readiness-probe", cfg.ready.port, "TCP")}
    assert (cfg.health.port, cfg.ready.port, cfg.metrics.port) == (8080, 8181, 9153)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert probe_port(container, "livenessProbe") == cfg.health.port
    assert probe_port(container, "readinessProbe") == cfg.ready.port


def test_the_image_entrypoint_with_kubeadms_args_reads_the_configmaps_corefile(
        kube_objects: list[Obj], tmp_path: Path) -> None:
    entrypoint = json.loads(dockerfile_stages()[-1].last("ENTRYPOINT"))
    assert entrypoint == ["clusterdns"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["clusterdns"] == "clusterdns.cli:main"
    (container,) = one(kube_objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    mounted = tmp_path / "Corefile"  # where the ConfigMap volume puts it
    mounted.write_text(corefile_of(kube_objects))
    args = [str(mounted) if a == "/etc/coredns/Corefile" else a for a in container["args"]]
    parsed = cli.parser().parse_args(cli.coredns_argv([*entrypoint[1:], *args]))
    assert parsed.command == "serve"
    expected, _ = corefile.load(mounted)
    assert cli.build_config(parsed) == expected


# -------------------------------------------------------------------- the sidecar


def sidecar_parts(objs: list[Obj]) -> tuple[Obj, Obj, Config]:
    """The Pod, its clusterdns container and the Config that container runs with."""
    pod = one(objs, "Pod")
    spec = pod["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    dns = [c for c in containers if c["image"].startswith("clusterdns")]
    assert len(dns) == 1
    entrypoint = json.loads(dockerfile_stages()[-1].last("ENTRYPOINT"))
    parsed = cli.parser().parse_args(cli.coredns_argv([*entrypoint[1:], *dns[0]["args"]]))
    assert parsed.command == "serve"
    return pod, dns[0], cli.build_config(parsed)


def test_the_sidecar_is_the_pods_only_resolver_on_loopback_and_forwards_elsewhere(
        sidecar_objects: list[Obj]) -> None:
    pod, _, cfg = sidecar_parts(sidecar_objects)
    ns = pod["metadata"]["namespace"]
    spec = pod["spec"]
    assert [str(a) for a in cfg.listen] == ["127.0.0.1:53"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == ["127.0.0.1"]
    zone = cfg.cluster_domain
    assert spec["dnsConfig"]["searches"] == [f"{ns}.svc.{zone}", f"svc.{zone}", zone]
    assert {"name": "ndots", "value": "5"} in spec["dnsConfig"]["options"]
    assert cfg.namespaces == frozenset({ns})
    assert cfg.fallthrough == frozenset({zone})  # other namespaces: ask the cluster DNS
    # With dnsPolicy None the pod's resolv.conf points at the sidecar itself: the
    # upstream has to be the cluster DNS by address, never a resolv.conf or loopback.
    assert cfg.upstreams
    for upstream in cfg.upstreams:
        host = config.parse_listen(upstream).host
        assert not upstream.startswith(("/", ".")) and not host.startswith("127.")


def test_the_sidecars_role_is_namespaced_and_grants_exactly_what_it_watches(
        sidecar_objects: list[Obj]) -> None:
    pod, _, cfg = sidecar_parts(sidecar_objects)
    ns = pod["metadata"]["namespace"]
    watches = KubeSource(cfg).watches()
    assert watches and all(watch_ns == ns for _, watch_ns in watches)
    assert Kind.NAMESPACE not in {kind for kind, _ in watches}  # cluster-scoped
    assert not [o for o in sidecar_objects if o["kind"].startswith("Cluster")]
    role = one(sidecar_objects, "Role")
    binding = one(sidecar_objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == ns
    assert granted(role["rules"]) == watched(cfg)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": pod["spec"]["serviceAccountName"],
                                    "namespace": ns}]
    one(sidecar_objects, "ServiceAccount", pod["spec"]["serviceAccountName"])


def test_the_sidecars_probes_hit_its_own_endpoints_on_ports_no_other_container_uses(
        sidecar_objects: list[Obj]) -> None:
    pod, dns, cfg = sidecar_parts(sidecar_objects)
    assert cfg.health and cfg.ready
    assert dns["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probe_port(dns, "livenessProbe") == cfg.health.port
    ready_probe = "startupProbe" if "startupProbe" in dns else "readinessProbe"
    assert dns[ready_probe]["httpGet"]["path"] == "/ready"
    assert probe_port(dns, ready_probe) == cfg.ready.port
    ours = {cfg.health.port, cfg.ready.port, *(a.port for a in cfg.listen)}
    if cfg.metrics:
        ours.add(cfg.metrics.port)
    spec = pod["spec"]
    for other in spec.get("initContainers", []) + spec["containers"]:
        if other is not dns:
            assert not ours & set(ports_by_name(other).values()), other["name"]
    assert dns["securityContext"]["readOnlyRootFilesystem"] is True
    assert dns["securityContext"]["capabilities"] == {"add": ["NET_BIND_SERVICE"],
                                                      "drop": ["ALL"]}


# --------------------------------------------------------------------- the image


def test_the_image_runs_as_65532_and_sets_pythondontwritebytecode() -> None:
    final = dockerfile_stages()[-1]
    assert final.last("USER") == "65532:65532"
    assert final.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    for stage in dockerfile_stages():
        base = stage.base
        if base.startswith("${"):  # an ARG given before the first FROM
            match = re.search(rf"^ARG {re.escape(base[2:-1])}=(\S+)$",
                              DOCKERFILE.read_text(), re.MULTILINE)
            assert match, f"no default for {base}"
            base = match.group(1)
        assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim-bookworm", base), base


def test_the_image_compiles_bytecode_at_build_time_and_gives_the_interpreter_port_53() -> None:
    build, final = dockerfile_stages()[0], dockerfile_stages()[-1]
    assert any("compileall" in run for run in build.all("RUN"))
    (setup,) = [run for run in final.all("RUN") if "setcap" in run]
    assert "compileall" in setup
    assert "cap_net_bind_service=+ep" in setup and "readlink -f" in setup
    # libcap2-bin is installed only for setcap and purged in the same layer.
    assert setup.index("install") < setup.index("setcap") < setup.index("purge")
    assert not [run for run in final.all("RUN") if "pip install" in run]


def test_the_image_command_and_exposed_ports_match_the_servers_defaults() -> None:
    final = dockerfile_stages()[-1]
    cmd = json.loads(final.last("CMD"))
    args = cli.parser().parse_args(cli.coredns_argv(cmd))
    assert args.command == "serve"
    copied = {c.split()[-1]: c.split()[0] for c in final.all("COPY")
              if "--from" not in c and len(c.split()) == 2}
    args.config = ROOT / copied[str(args.config)]  # the image's file is the repo's
    cfg = cli.build_config(args)
    exposed = set(" ".join(final.all("EXPOSE")).split())
    for addr in cfg.listen:
        assert {f"{addr.port}/udp", f"{addr.port}/tcp"} <= exposed
    for endpoint in (cfg.health, cfg.ready, cfg.metrics):
        assert endpoint is not None and f"{endpoint.port}/tcp" in exposed


def test_dockerignore_sends_the_package_and_keeps_the_rest_out() -> None:
    for stage in dockerfile_stages():
        for copy in stage.all("COPY"):
            if "--from" in copy:
                continue
            for source in copy.split()[:-1]:
                assert not dockerignore_excludes(source), f"COPY {source} is ignored"
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py",
                     "clusterdns/__pycache__/cli.cpython-312.pyc", "bench/x.py"):
        assert dockerignore_excludes(kept_out), kept_out
    assert not dockerignore_excludes("clusterdns/source/kube.py")


# ------------------------------------------------------- no writes at start (ro rootfs)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime in ns)."""
    state: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                state[str(path)] = (st.st_size, st.st_mtime_ns)
    return state


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
            ) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@contextlib.contextmanager
def server_process(cmd: list[str], cwd: Path, env: dict[str, str]
                   ) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def wait_for_port(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> int:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail("the server never said where it listens:\n" + "".join(seen))
        seen.append(line)
        match = re.search(r"listening on 127\.0\.0\.1 port (\d+)", line)
        if match:
            return int(match.group(1))
        if proc.poll() is not None and lines.empty():
            pytest.fail("the server exited:\n" + "".join(seen))


# Runs ``clusterdns`` from the package folder given first, after checking that this is
# the copy imported (not the editable install of the repo).
LAUNCH = ("import sys, clusterdns; pkg = sys.argv.pop(1); "
          "assert clusterdns.__file__.startswith(pkg), clusterdns.__file__; "
          "from clusterdns.cli import main; sys.exit(main(sys.argv[1:]))")


def fresh_package(tmp_path: Path) -> Path:
    """A copy of the package with no __pycache__, so that a bytecode write would show."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "clusterdns", pkg / "clusterdns",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def test_the_server_started_with_the_images_environment_writes_no_file(
        tmp_path: Path) -> None:
    # HOME, TMPDIR and the working folder are empty folders of their own.
    pkg = fresh_package(tmp_path)
    source = tmp_path / "source"
    shutil.copytree(ROOT / "config", source)
    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
    image_env = dockerfile_stages()[-1].env()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
           **{k: v for k, v in image_env.items() if k != "PATH"},
           "HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(pkg)}
    watched_dirs = [tmp_path, Path(sysconfig.get_paths()["purelib"]),
                    Path(sysconfig.get_paths()["platlib"])]
    before = {d: tree_state(d) for d in watched_dirs}
    cmd = [sys.executable, "-c", LAUNCH, str(pkg / "clusterdns"), "serve",
           "--source", f"file:{source / 'demo-cluster.yaml'}",
           "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "127.0.0.1:0",
           "--metrics", "127.0.0.1:0", "--lameduck", "0"]
    with server_process(cmd, cwd, env) as (proc, lines):
        port = wait_for_port(proc, lines)
        for tcp in (False, True):
            q = dns.message.make_query("httpenv.default.svc.cluster.local", "A")
            send = dns.query.tcp if tcp else dns.query.udp
            reply = send(q, "127.0.0.1", port=port, timeout=TIMEOUT)
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    for d in watched_dirs:
        assert changes(before[d], tree_state(d)) == [], f"files written under {d}"
    assert not (pkg / "clusterdns" / "__pycache__").exists()


def test_the_no_writes_check_sees_bytecode_written_without_the_images_environment(
        tmp_path: Path) -> None:
    """The check above can fail: without PYTHONDONTWRITEBYTECODE, the same launch of the
    fresh copy writes __pycache__, and tree_state shows it."""
    pkg = fresh_package(tmp_path)
    before = tree_state(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-c", LAUNCH, str(pkg / "clusterdns"),
                          "--version"], cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(pkg)}, capture_output=True, text=True,
                         timeout=TIMEOUT, check=False)
    assert out.returncode == 0, out.stderr
    assert any("__pycache__" in p for p in changes(before, tree_state(tmp_path)))
