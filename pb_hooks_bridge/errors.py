"""The bridge's exceptions. One tree, shallow on purpose."""


class BridgeError(Exception):
    """Base of everything the bridge raises on purpose."""


class BootstrapError(BridgeError):
    """Operator/SYS key material is missing, corrupt or inconsistent; never silently replaced."""
