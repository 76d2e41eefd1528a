"""Vendor API dialects, one package each; `core.dialects` lists how they plug in (docs/architecture.md)."""

# The dialects a default deployment serves (COHORTS_DIALECTS overrides): adding one is its folder and a name here.
INSTALLED = "sensors,sugo,ark,thinkingdata"
