"""The Kafka runtime: wires the pure join and fusion to aiokafka consumers and producers."""
