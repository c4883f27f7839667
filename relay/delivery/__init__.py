"""Delivery: what every sink gets without writing it. One loop per sink (dispatcher.py)
reads the log, keeps each object's events in order (lanes.py), parks an object whose event
keeps failing instead of the whole sink (parked.py), knows a stale event (stale.py), and
decides what a round did without I/O (plan.py)."""
