"""Local stack launcher: starts nats-server, PocketBase and the Cairn sidecars for `make run`.

The same process helpers start the real servers in the test suite.
"""
