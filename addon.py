"""Entry point for `mitmdump -s addon.py --set edgerules_policy=rules/aybiza.yaml --set edgerules_env=local`."""

from edgerules.edge.addon import addons  # noqa: F401
