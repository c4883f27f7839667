"""The NATS sinks: `nats` (messages.py: each event a message, on core NATS or JetStream) and
`nats_objects` (objects.py: the audit trail in a JetStream object store). Both reach the
server through connection.py, so servers, credentials, TLS and reconnecting are read and
handled the same way."""
