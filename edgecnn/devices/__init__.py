"""Devices: profiles, transports (local, SSH, emulated ARM64) and deployment."""
