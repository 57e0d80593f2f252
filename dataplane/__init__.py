"""podnet control plane: cluster spec, IPAM, namespaces, node agents, CLI."""
__version__ = "0.1.0"
