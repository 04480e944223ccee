"""Deciding what to block: the policy, its protections, widening, routed prefixes, AS data, targets."""
