# etcd from Debian's etcd-server package, FROM scratch. Built by scripts/docker-build.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 state/ /var/lib/etcd/
# /ringcast only serves the healthcheck (GET /health on the client port).
COPY bin/etcd bin/ringcast /
USER 65532:65532
EXPOSE 2379/tcp 2380/tcp
HEALTHCHECK --interval=2s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/ringcast", "health", "--node", "http://127.0.0.1:2379", "--path", "/health"]
ENTRYPOINT ["/etcd"]
