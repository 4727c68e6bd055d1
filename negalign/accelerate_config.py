"""``negalign accelerate-config NAME``: print the path of a shipped accelerate launch config (``negalign.shipped``)."""

from negalign.shipped import accelerate_main as main  # noqa: F401
from negalign.shipped import add_accelerate_arguments as add_arguments  # noqa: F401
