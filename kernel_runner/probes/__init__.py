"""The probe engine: HTTP, TCP and exec probes, scheduled, run off the actors' threads, timed out and counted.

kinds.py runs one probe; runner.py is the thread that runs them for an actor; loop.py schedules one probe and counts
its answers; service.py gives a service's startup, liveness and readiness probes their meaning; plans.py makes a
service definition's probes into a plan. The model checker (actors/health) and the service actor (actors/service)
both build on it (docs/architecture.md §4, docs/protocol.md §6.14, §7.2).
"""
