"""Errors of the pool model. Each carries a message a person can act on."""

from __future__ import annotations

from dataclasses import dataclass


class GpupoolError(Exception):
    """Base of every error gpupool raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where it is, and what to write instead."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidRequest(GpupoolError):
    """A pod (or trace row, or annotation) asks for something malformed or impossible."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class OverAllocation(GpupoolError):
    """A commit would push a GPU (or slot pool) past its capacity; nothing was changed."""


class UnknownHolder(GpupoolError):
    """No holding exists for this pod."""


class AssignmentError(GpupoolError):
    """An assignment annotation is malformed, unsigned, or carries a wrong signature."""
