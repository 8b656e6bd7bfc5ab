# syntax=docker/dockerfile:1
# crosswire: the gateway daemon and the node agent in one image (see deploy/README.md).
#
#   docker build -t crosswire:0.1.0 .
#
# Stage 1 builds wheels for the project and every dependency; stage 2 installs
# them offline, so the final image carries no compiler, build backend or source.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY ipam/ ipam/
COPY fabric/ fabric/
COPY gateway/ gateway/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="crosswire" \
      org.opencontainers.image.description="WireGuard fabric between Kubernetes clusters with overlapping pod and service ranges" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian 12 packages, pinned; --no-install-recommends because wireguard-tools
# would otherwise pull in a kernel image. libnftables1 is what fabric/nft.py
# loads through ctypes; wireguard-go is the `wireguard.implementation:
# wireguard-go` option; iproute2, wireguard-tools and conntrack are what
# operators debug with (ip, wg show, nft list table, conntrack -L).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      conntrack=1:1.4.7-1+b2 \
      iproute2=6.1.0-3 \
      libnftables1=1.0.6-2+deb12u2 \
      nftables=1.0.6-2+deb12u2 \
      wireguard-go=0.0.20220316-1+b4 \
      wireguard-tools=1.0.20210914-1+b1 \
 && rm -rf /var/lib/apt/lists/*
# Install from the build stage's wheels without network access, then drop the
# installers: nothing in the image builds or fetches code at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/crosswire-*.whl \
 && pip uninstall --yes --no-cache-dir setuptools wheel pip
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# WireGuard (UDP), the peering listener (TLS) and the operator listener (TCP,
# inside the cluster only: 8081 in the manifests); DNS
# for imported services on the manifests' dns.listen (10053: no
# CAP_NET_BIND_SERVICE in the container for the default 53).
EXPOSE 51820/udp 8080/tcp 8081/tcp 10053/udp 10053/tcp
# state_dir (keys, IPAM, peers): keep it on a volume or the cluster's identity
# is lost with the container.
VOLUME ["/var/lib/crosswire"]
# Runs as root with only CAP_NET_ADMIN in Kubernetes (deploy/kubernetes drops
# every other capability): creating the TUN device, links, routes and the
# nftables table all need it, and capabilities do not reach a non-root process
# without ambient capabilities, which Kubernetes cannot grant.
ENTRYPOINT ["crosswire"]
CMD ["gateway", "run", "--config", "/etc/crosswire/gateway.yaml"]
