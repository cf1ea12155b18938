"""kaitopy: deploy and fine-tune AI models on GPU clusters through Kaito's Workspace API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kaitopy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
