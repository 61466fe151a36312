"""The agent's exceptions: a shallow tree; library errors are converted at the boundary."""


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


class ConfigError(AgentError):
    """agent.yaml is unusable; the message names the file and the key."""


class CommandError(AgentError):
    """A command request is refused or failed; the message is sent back to the caller."""


class EnrollmentError(AgentError):
    """Enrollment could not complete; the message says what to do."""
