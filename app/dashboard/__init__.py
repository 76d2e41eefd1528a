"""The dashboard at /: a server-rendered page per project (Flask templates, no front-end build; docs/dashboard.md)."""
