"""The local stack: Kafka (KRaft), Redis and PostgreSQL run natively, reused when already up."""
