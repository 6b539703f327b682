# driftline image: one wheel, every command (`driftline worker`, `dispatcher`, `receiver`,
# `rules export-prometheus`, `replay`, ...). docker-compose.yml builds it.

# Stage 1: build the wheel (Rust core + the four Python packages) with maturin.
FROM rust:1.89-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin==1.16.0
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY drift_core/ drift_core/
COPY stream/ stream/
COPY alerts/ alerts/
COPY serving_hooks/ serving_hooks/
RUN /opt/maturin/bin/maturin build --release --locked --interpreter python3 --out /wheels

# Stage 2: the runtime: the wheel, its dependencies and the MLflow client (references
# of registered model versions; the version the tests run with, requirements-dev.txt).
FROM python:3.11-slim-bookworm
ARG MLFLOW_VERSION=3.17.2
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl "mlflow-skinny==${MLFLOW_VERSION}" \
    && rm -rf /tmp/wheels
# directories that volumes mount over start out owned by the service user
RUN useradd --system --uid 10001 --home-dir /var/lib/driftline driftline \
    && mkdir -p /var/lib/driftline/receiver /var/lib/driftline/rules /var/lib/driftline/worker \
    && chown -R driftline:driftline /var/lib/driftline
USER driftline
WORKDIR /var/lib/driftline
EXPOSE 9464 9465 8787
ENTRYPOINT ["driftline"]
CMD ["--help"]
