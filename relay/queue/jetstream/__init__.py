"""The log on a replicated NATS JetStream stream (RELAY_LOG=nats://…): log.py is the
backend; connect.py how it reaches the servers; state.py a sink's document; leases.py one
deliverer per sink; records.py how things are stored as messages."""
