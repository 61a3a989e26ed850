"""Hypervisor port adapters. Only ``libvirt_hypervisor`` imports ``libvirt``."""
