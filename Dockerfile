# clusterdns image: a drop-in for the CoreDNS container of a kubeadm/kind cluster.
#
#   docker build -t clusterdns:dev .
#
# CI builds and runs it with podman on a debootstrapped stand-in for the base image:
# .ci/image (see the README).
#
# - runs as uid/gid 65532 (the "nonroot" user of distroless images, as CoreDNS does);
# - binds port 53 without root: the interpreter carries the file capability
#   cap_net_bind_service, which the kubelet's `capabilities: add: [NET_BIND_SERVICE]`
#   keeps in the bounding set (allowPrivilegeEscalation: false still allows it, since
#   the capability is already in the container's permitted set). Alternative without
#   file capabilities: the pod sysctl `net.ipv4.ip_unprivileged_port_start: "53"`
#   (Docker and containerd 2 already set it to 0 in a container's network namespace);
# - works with readOnlyRootFilesystem: true: bytecode is compiled here, at build time,
#   and PYTHONDONTWRITEBYTECODE stops Python from trying to write any at start;
# - ENTRYPOINT is the program, so kubeadm's `args: ["-conf", "/etc/coredns/Corefile"]`
#   work unchanged after `kubectl set image deployment/coredns coredns=clusterdns:dev`.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/clusterdns
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY clusterdns ./clusterdns
# A regular (non-editable) install of the package and its runtime dependencies only;
# then pip itself goes (nothing installs at run time), and everything is compiled.
# Where pip needs settings to reach an index (a mirror, a proxy's CA), give them as
# build secrets, mounted for this step only and never part of a layer:
#   --secret id=pipconf,src=pip.conf  (read as /etc/pip.conf)
#   --secret id=pipcert,src=ca.pem    (for `cert = /run/secrets/pipcert` in that file)
# Without them pip uses its defaults.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=pipcert \
    /opt/clusterdns/bin/pip install . \
 && /opt/clusterdns/bin/pip uninstall -y pip \
 && /opt/clusterdns/bin/python -m compileall -q -j 0 \
        --invalidation-mode unchecked-hash /opt/clusterdns/lib

# ---------------------------------------------------------------------------- run
FROM ${PYTHON_IMAGE}
# The official image strips the standard library's .pyc files: compile them once here
# (unchecked-hash: valid whatever the files' timestamps), and give the real interpreter
# binary (not the venv's symlink) the right to bind ports below 1024. libcap2-bin is
# only needed for setcap, so it is installed and purged in the same layer, and apt's
# lists and caches go with it: a base image without Debian's docker-clean apt settings
# would otherwise keep about 77 MB of them in this layer.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
 && apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v python3)")" \
 && apt-get purge -y --auto-remove libcap2-bin \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
        /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/clusterdns /opt/clusterdns
COPY config/clusterdns.yaml /etc/clusterdns/clusterdns.yaml
ENV PATH=/opt/clusterdns/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /
EXPOSE 53/udp 53/tcp 8080/tcp 8181/tcp 9153/tcp
ENTRYPOINT ["clusterdns"]
CMD ["serve", "--config", "/etc/clusterdns/clusterdns.yaml", "--upstream", "/etc/resolv.conf"]
