"""Runtimes: the on-device agent and the host-side helpers that run it."""
