"""Netlink as netblock speaks it: one core (socket, framing, reply loop) and one module per protocol."""
