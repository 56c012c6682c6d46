"""The API's version (shown in the OpenAPI document and the dashboard, and in its static files' URLs)."""

__version__ = "0.1.0"
