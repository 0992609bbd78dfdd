"""The `agentkeys` command (placeholder until login-core's package lands)."""
