"""The REST client (`rest`): typed requests to the API server over kubernetes_asyncio's transport."""

from kaitopy.runtime.client.rest import Client, ClientSettings, ObjectList

__all__ = ["Client", "ClientSettings", "ObjectList"]
