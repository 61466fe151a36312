"""agent: the Cairn edge agent (enrolls, answers commands, publishes telemetry)."""
