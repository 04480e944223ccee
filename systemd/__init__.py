"""systemd units for netblock, shipped as package data for `netblock install-units`."""
