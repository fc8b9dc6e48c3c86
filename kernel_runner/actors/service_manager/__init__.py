"""The service manager: turns the agent's service ops into requests to the supervisor."""
