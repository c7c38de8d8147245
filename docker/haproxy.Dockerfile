# HAProxy from Debian's haproxy package, FROM scratch. Built by scripts/docker-build.
# The load balancer of the compose cluster: docker/haproxy.cfg, docs/docker.md.
FROM scratch
# Shared with the other images (same first layer): glibc, the loader, nsswitch, passwd.
COPY rootfs/ /
# The shared libraries `ldd /usr/sbin/haproxy` lists beyond that layer (OpenSSL, Lua,
# PCRE2, libsystemd, ...).
COPY haproxy-rootfs/ /
# /run/haproxy holds the runtime API socket; writable by UID 65532.
COPY --chown=65532:65532 state/ /run/haproxy/
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
# /ringcast only serves the healthcheck (GET /healthz on the stats port).
COPY bin/haproxy bin/ringcast /
USER 65532:65532
EXPOSE 7400/tcp 8404/tcp
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/ringcast", "health", "--node", "http://127.0.0.1:8404", "--path", "/healthz"]
# -db: stay in the foreground as the container's main process; SIGTERM stops it.
ENTRYPOINT ["/haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
