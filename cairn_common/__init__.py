"""Code shared by the agent, the bridge and the router: PocketBase client, NATS JWTs and creds,
logging setup. Kept small on purpose."""
