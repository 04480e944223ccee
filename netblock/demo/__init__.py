"""The demo: a storm of abusive senders against a real kernel in throwaway network namespaces (lab)."""
