"""The control socket: how operators (`kernel-runner ctl`) watch and steer a runner, apart from the agent's sockets.

`protocol` (framing, the socket's default path) and `client` use the standard library only, so `kernel-runner ctl`
starts fast and loads no actor code; `server` (the socket file, connections, requests in and replies out) and
`commands` (what each command does) run inside the runner (docs/operations.md §1).
"""
