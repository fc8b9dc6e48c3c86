"""Exceptions of the service-definition layer and the upstream-named ones whose repr is the agent-visible reply text."""

from __future__ import annotations


class ServiceStartError(Exception):
    """A start that must end in `{"status": "failed", "error": reply_text}`; the text is what the user sees."""

    @property
    def reply_text(self) -> str:
        return str(self)


class TemplateError(ServiceStartError):
    """A template that cannot be rendered (docs/protocol.md §6.4); upstream let the bare KeyError/IndexError escape."""


class DefinitionError(Exception):
    """A service definition that cannot be used, with one readable `<source>: <message> @ $.path` line per problem."""

    def __init__(self, problems: tuple[str, ...], *, reply: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        # What a start request for this definition answers (docs/protocol.md §6.2 step 11 text where upstream has one).
        self.reply = reply


class SshdSetupError(Exception):
    """sshd key preparation failed (docs/protocol.md §6.10 step 2.5: `sshd init error: <stderr>`); the rest is skipped."""


# The three classes below exist only so that `repr(exc)` yields upstream's reply text byte for byte
# (docs/protocol.md §6.2 step 11, §6.6): e.g. DisallowedEnvironment("Environment variable HOME can't be overwritten").


class DisallowedArgument(Exception):
    """docs/protocol.md §6.6 step 2.2."""


class DisallowedEnvironment(Exception):
    """docs/protocol.md §6.6 step 3.2."""


class InvalidServiceDefinition(Exception):
    """docs/protocol.md §6.5: an action name outside the whitelist."""
