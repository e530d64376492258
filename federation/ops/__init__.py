"""Running a federation: servers, their configuration, keys, certificates and stream layout.

- :mod:`.launcher`: ``fed up``: nats-server processes, daemons, health checks, restarts;
- :mod:`.deploy`: nats-server configuration and the Docker Compose files;
- :mod:`.provision`: each region's streams, buckets and the hub's copies (idempotent);
- :mod:`.auth`: what each role may publish and read (the servers' ``accounts`` block);
- :mod:`.keyring`: the identities a federation accepts, on disk; :mod:`.pki`: a local CA for TLS;
- :mod:`.proxy`: the controllable link proxy (``fed up --chaos``); :mod:`.monitor`: the servers'
  monitoring endpoints.
"""
