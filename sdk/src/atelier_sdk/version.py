"""The SDK's version (sent as ``User-Agent: atelier-sdk/<version>``)."""

__version__ = "0.2.0"
