"""HTTP blueprints: the native API, health, and the OpenAPI document."""
