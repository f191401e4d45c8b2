"""Helpers for tests against a live server: a model repository, metric scrapes, health."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from smoothserve_dev.models import write_linear_model

SHAPE = (1, 8, 8)
CLEAR_INPUT = np.full(SHAPE, 0.8, np.float32)  # w.x + b = 2.4 > 0: class 1, radius ~2.4


def write_linear_repo(root: Path, name: str = "lin", sigma: float = 0.25) -> Path:
    """A repository with one (1, 8, 8) linear model: class 1 iff mean(x) > 0.5."""
    repo = root / "repo"
    write_linear_model(repo, name, np.full(64, 1 / 8), -4.0, sigma, SHAPE)
    return repo


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample, have, value in scrape(url)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
