"""Consuming retrain events straight from Kafka (instead of a webhook).

    python docs/examples/consume_retrain.py 127.0.0.1:9092

Events on ``driftline.retrain`` are CloudEvents 1.0 in structured JSON, keyed by model.
Delivery is at least once: keep the ids you have acted on and skip repeats; commit the
offset only after acting, so a crash means a redelivery, never a loss.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer


async def main(bootstrap: str) -> None:
    consumer = AIOKafkaConsumer(
        "driftline.retrain",
        bootstrap_servers=bootstrap,
        group_id="my-orchestrator",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    done: set[str] = set()  # use a durable store in production
    try:
        async for record in consumer:
            event = json.loads(record.value or b"{}")
            if event.get("type") == "io.driftline.retrain.requested" and event["id"] not in done:
                data = event["data"]
                print(
                    f"retrain {data['model']} v{data['model_version']} ({data['rule']}, "
                    f"{data['window']['start']}): "
                    + ", ".join(
                        f"{b['feature']} {b['metric']}={b['value']:.3f}" for b in data["breaches"]
                    )
                )
                done.add(event["id"])
            await consumer.commit()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"))
