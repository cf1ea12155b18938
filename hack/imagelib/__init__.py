"""Helpers for hack/images.py: the loopback registry, the Debian base, buildah builds, the content cache."""
