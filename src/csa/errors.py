"""The one exception type for mistakes a user can fix, and the one warning type for what a
user should know (:class:`InpaintWarning`).

The CLI prints its message without a traceback and exits 2; the server maps it to a
4xx JSON body ``{"error": ..., "detail": ...}`` with ``http_status``.
"""
from __future__ import annotations


#: The interfaces a message can be shown in; each names an option its own way.
INTERFACES = ("python", "cli", "api")


def option_name(name: str, interface: str) -> str:
    """How a boolean option is switched on in ``interface``: ``resize_mask=True`` (Python),
    ``--resize-mask`` (command line) or ``resize_mask=true`` (a REST form field)."""
    if interface == "cli":
        return "--" + name.replace("_", "-")
    if interface == "api":
        return f"the form field {name}=true"
    return f"{name}=True"


class CsaError(Exception):
    """A user error: the message says what was wrong and what to do about it.

    A message that tells the user to switch an option on names it as ``{option}`` and
    lists it in ``options``; :meth:`render` writes it the way the interface showing the
    message spells it (``message`` is the Python spelling).
    """

    def __init__(self, message: str, *, http_status: int = 400, kind: str = "bad_input",
                 options: tuple[str, ...] = ()) -> None:
        self.template = message
        self.options = tuple(options)
        self.message = self.render("python")
        super().__init__(self.message)
        self.http_status = http_status
        self.kind = kind

    def render(self, interface: str) -> str:
        """The message as shown in ``interface`` (one of :data:`INTERFACES`)."""
        if not self.options:
            return self.template
        return self.template.format(**{name: option_name(name, interface) for name in self.options})


class InpaintWarning(UserWarning):
    """Something the user should know that is not an error (e.g. an empty mask, a lossy format)."""


# Exit codes shared by every command (docs/conventions.md, 'Exit codes').
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130
