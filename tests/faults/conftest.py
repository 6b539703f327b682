"""The fault checks reuse the integration fixtures (real brokers, workers)."""

from tests.integration.conftest import kafka, setup, start_worker  # noqa: F401
