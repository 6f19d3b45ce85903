"""`ExportError`, the one error this package raises for what it cannot export."""


class ExportError(ValueError):
    """A model, file or argument that cannot be exported; the message says why."""
