"""imagenet-plus: build a synthetic, quality-filtered ImageNet clone with diffusion models.

Stages (each a module, each usable from Python and from the ``imagenet-plus`` CLI):
``classes`` → ``generate`` → ``score`` → ``select`` → ``release`` → ``publish`` / ``report`` / ``evaluate``.
See ARCHITECTURE.md for the data contract between them.
"""

__version__ = "0.1.0"
