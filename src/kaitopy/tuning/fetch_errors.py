"""The downloader's errors, shared by the fetch loop and its connection guard."""

from __future__ import annotations


class FetchError(RuntimeError):
    """A URL could not be downloaded; the message names it."""


class RefusedAddress(FetchError):
    """The URL's host is, or resolves to, an address the fetcher must not reach."""
