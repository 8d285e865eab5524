"""The mitmproxy script inside the installed package: `mitmdump -s "$(edgerules addon-path)" ...`.

Same addon as the repository's `addon.py`; this one exists wherever edgerules is pip-installed.
"""

from edgerules.edge.addon import addons  # noqa: F401
