"""pb_hooks_bridge: keeps NATS identities in step with PocketBase (the pb-nats equivalent)."""
