"""Subcommands of the root CLI, one module per area; each exposes register(subparsers)."""
