"""Deployment: the local stack manager, Kafka fetch, Dockerfile, Helm chart and dashboards."""
