"""Files for the local single-node Kafka broker (see :mod:`stream.localkafka`)."""
