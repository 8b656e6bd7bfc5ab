"""DNS for imported services: ``<service>.<namespace>.svc.<dns.zone>`` (see DESIGN.md)."""
