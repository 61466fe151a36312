"""rule_router: evaluates YAML rules from PocketBase against NATS messages."""
