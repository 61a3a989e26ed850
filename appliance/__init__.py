"""clawden: one hardened VM per family member's claw, managed from the host."""

__version__ = "0.1.0"
