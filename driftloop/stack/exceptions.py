"""Errors of the local stack.

StackError
└── ComponentNotFound   (a server binary or its files are missing)
"""


class StackError(Exception):
    """A server of the local stack could not be set up, started, probed or stopped."""


class ComponentNotFound(StackError):
    """A binary, library or file the stack needs is not installed; the message says how to get it."""
