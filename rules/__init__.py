"""The kernel rulesets netblock installs, in their own languages (package data)."""
