"""netns-lab: simulated Kubernetes clusters out of network namespaces (see netns-lab/DESIGN.md)."""
