"""Talking to the host: its addresses, the kernel lock, systemd notify, units, completion, progress."""
