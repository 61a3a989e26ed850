"""The pure core: domain model and ports. Imports no adapter (libvirt, paramiko, sqlite)."""
