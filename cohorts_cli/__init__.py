"""`cohorts`: the service's command-line client (REST, with progress bars) and the engine's local commands."""
