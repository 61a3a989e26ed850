"""In-VM claw agent. Imports nothing host-side."""
