"""driftline serving_hooks: what a serving pod imports to publish its predictions.

- ``serving_hooks.publisher``: ``SyncPublisher`` / ``AsyncPublisher`` and their plain
  function API, ``record(model, version, features, prediction=..., latency_ms=...)`` for
  one prediction and ``record_many(...)`` for a batch of rows.
- ``serving_hooks.fastapi``: ``@monitor(...)`` for FastAPI / Starlette endpoints and
  ``publisher_lifespan(...)``, which starts and flushes publishers with the app.
- ``serving_hooks.mlflow``: ``MonitoredModel`` / ``load_monitored("models:/NAME/VERSION",
  publisher)``, a pyfunc model that publishes one event per predicted row.
- ``python -m serving_hooks.example_app``: an example serving app and traffic generator.

Nothing here imports FastAPI, MLflow or pandas until it is used.
"""
