"""The router: sole owner of the agent's sockets (its I/O thread is agent_link.py)."""
