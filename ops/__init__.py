"""Cross-service tooling: start a local cluster (``LocalCluster``, ``shardline up``), prepare models, make
certificates, the container healthcheck, Prometheus scrape config, free ports. No service imports this package."""
