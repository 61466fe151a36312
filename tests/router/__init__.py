"""Tests of the rule router (mirrors rule_router/)."""
